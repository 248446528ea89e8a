"""The harness shared by the tests, ``dilithion-lab``, ``dilithion-diff`` and the benchmarks.

What more than one of them needs lives here once, so a fix to how a port is
picked, a node process is started or a peer speaks is made in one place:

* :mod:`.ports` - the port allocator (outside the ephemeral range, leased
  against other processes);
* :mod:`.node_process` - the one node-process wrapper (``NodeProcess``) and our
  node (``PythonNode``): the tests' ``ProcessNode``, the lab's nodes, the diff,
  the benchmarks;
* :mod:`.cpp_node` - the C++ binary by path as a node process (``CppNode``) and
  its tip read from its log (the diff, the lab's ``mixed``, ``bench_mining``,
  ``tests/test_cpp_interop.py``);
* :mod:`.wire_peer` - the one wire peer (frames, own source address,
  handshake; blocking reads with a ping/pong barrier, or a reader thread with
  ``on_<command>`` callbacks and counters; ``TestPeer``/``RawPeer`` are its
  test-facing defaults);
* :mod:`.swarm` - many such peers at once (the lab's load scenario);
* :mod:`.testnet_blocks` - the C++ vector chain and the pre-mined testnet blocks.

It sits in the tools layer, below ``dilithion.tools`` (``.importlinter``): the
tools import it, it imports nothing from them.
"""
