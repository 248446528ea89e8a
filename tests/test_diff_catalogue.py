"""The divergence catalogue explains only what it names (docs/DIFF.md, "The divergence catalogue").

* every difference a real C++ run showed (the recorded ``[[divergence.case]]``s)
  is explained by exactly its own entry;
* made-up differences that are NOT known divergences, among them the five of
  issue 24, all come back unexplained from the real catalogue;
* step signatures are computed from a step's bytes, never its name;
* a matcher without one of its fields is refused with one line;
* a side that leaves a step unanswered still has its wire compared (``net D-03``).
"""
from __future__ import annotations

import json
import stat
import sys

import pytest

from dilithion.core.chainparams import MAINNET_MAGIC
from dilithion.tools.diff.catalogue import CatalogueError, load_catalogue
from dilithion.tools.diff.cli import BUILTIN_CORPORA, BUILTIN_CORPUS, CATALOGUE
from dilithion.tools.diff.corpus import Step, load_corpus
from dilithion.tools.diff.observe import Difference
from dilithion.tools.diff.signature import StepSignatures, command_text
from dilithion.net.serialize import calculate_checksum

from test_cpp_tip_reader import HASHES
from test_diff import FAKE_NODE, corpus_file, one_error_line, run_diff


H = HASHES
CPP_NOT_INITIALIZED = {"error": {"code": -32603, "message": "Chain state not initialized"}}
UNKNOWN = "201f1e1d1c1b1a191817161514131211100f0e0d0c0b0a090807060504030201"


def payload_of(name: str) -> str:
    """The ``block`` payload (hex) of a built-in corpus step, by the block's step name."""
    for path in BUILTIN_CORPORA:
        for step in json.loads(path.read_text())["steps"]:
            if step.get("send") == "block" and name in step.get("name", ""):
                return step["payload_hex"]
    raise KeyError(name)


def wire_block(name: str) -> list:
    return [{"payload_hex": payload_of(name)}]


def inv_items(*items: str) -> list:
    return [{"items": list(items)}]


@pytest.fixture
def fake_cpp(tmp_path):
    """tests/data/fake_cpp_node.py as an executable, in the C++ binary's place."""
    fake = tmp_path / "fake-node"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE_NODE} \"$@\"\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE)


# ---- recorded cases: each explained by its own entry ------------------------------------------
def test_every_exercised_entry_has_recorded_cases_each_explained_by_that_entry(catalogue):
    exercised = [e for e in catalogue.entries if e.exercised]
    assert len(exercised) >= 14
    for entry in exercised:
        assert entry.cases, entry.id
        for case in entry.cases:
            got = catalogue.explain(case.difference(), case.on)
            assert got is entry, (entry.id, case, got and got.id)


# ---- made-up differences: none is a known divergence ------------------------------------------
#: (why it is not known, step signature, kind, subject, C++ side, our side)
NOT_KNOWN = [
    # the five of issue 24
    ("net D-14: our node does not answer a getdata for the tip", "send getdata",
     "wire", "wire.block", wire_block("vector block 6"), []),
    ("net 4.5: our node disconnects the sender of a valid block", "send block",
     "disconnect", "disconnect", False, True),
    ("cli 6.3 #29-#32: our node answers -8 to a valid getblockhash 1",
     'rpc getblockhash {"height": 1}', "rpc", "rpc.getblockhash", CPP_NOT_INITIALIZED,
     {"error": {"code": -8, "message": "Height parameter out of range"}}),
    ("cli 6.3 #29-#32: ... also where the C++ side answers the call",
     'rpc getblockhash {"height": 1}', "rpc", "rpc.getblockhash",
     {"result": {"blockhash": H["V1"]}},
     {"error": {"code": -8, "message": "Height parameter out of range"}}),
    ("net D-03: the C++ node hangs on a valid block", "send block",
     "wire", "wire.no-reply", True, False),
    ("net D-03: our reply on a step the C++ hangs on", "send ping bad-magic",
     "wire", "wire.pong", [], [{"nonce": "<nonce>"}]),
    ("cli 3.8: our getpeerinfo answers an error", "rpc getpeerinfo",
     "rpc", "rpc.getpeerinfo", {"result": []},
     {"error": {"code": -8, "message": "Invalid parameter"}}),
    # consensus
    ("a tip difference on a vector block", "send block", "consensus", "tip",
     H["V1"], "924bdb80469e1185814407147bc763a62425cc400bc902ce37d73ffbc3524475"),
    ("our node takes the tie G8 (first seen stays)", "send block", "consensus", "tip",
     H["F8"], H["G8"]),
    ("after the orphan, another height", "send block", "consensus", "height", 9, 8),
    ("our node takes a bad proof of work", "send block bad-pow", "consensus", "tip",
     H["F8"], H["BADPOW"]),
    # wire and disconnects
    ("our node disconnects on a bad checksum", "send ping bad-checksum",
     "disconnect", "disconnect", False, True),
    ("our node is banned-happy on a bad proof of work", "send block bad-pow",
     "ban", "ban", False, True),
    ("a notfound only we send, for the tip", "send getdata", "wire", "wire.notfound",
     [], [{"payload_hex": "0102000000" + bytes.fromhex(H["V6"])[::-1].hex()}]),
    ("an inv only we send, on a block", "send block", "wire", "wire.inv",
     [], inv_items("2:" + H["V6"])),
    ("a getblocks only we send, on a getdata", "send getdata", "wire", "wire.getblocks",
     [], [{"payload_hex": "00"}]),
    ("we leave out the verack of a handshake", "reconnect", "wire", "wire.verack",
     [{"payload_hex": ""}], []),
    ("we request a tx we were not told of", "send inv", "wire", "wire.getdata",
     [], inv_items("1:" + H["V6"])),
    ("we leave out a getdata for a valid inv of an unknown block", "send inv", "wire",
     "wire.getdata", inv_items("2:" + UNKNOWN), []),
    ("another user agent of ours", "reconnect", "wire", "wire.version.user_agent",
     "/Dilithion:0.1.0/", "/Evil:6.6.6/"),
    ("a start height the C++ node does not send", "reconnect", "wire",
     "wire.version.start_height", 5, 6),
    # RPC
    ("our getblockcount answers an error", "rpc getblockcount", "rpc", "rpc.getblockcount",
     CPP_NOT_INITIALIZED, {"error": {"code": -1, "message": "boom"}}),
    ("our getblockcount answers another height", "rpc getblockcount", "rpc",
     "rpc.getblockcount", CPP_NOT_INITIALIZED, {"result": 9}),
    ("a method the catalogue does not name", "rpc getchaintips", "rpc", "rpc.getchaintips",
     CPP_NOT_INITIALIZED, {"result": []}),
    ("another getpeerinfo of ours", "rpc getpeerinfo", "rpc", "rpc.getpeerinfo.result",
     [], [{"banscore": 100}]),
    ("another connection count of ours", "rpc getnetworkinfo", "rpc",
     "rpc.getnetworkinfo.result.connections", None, 5),
    ("no help of ours", "rpc help", "rpc", "rpc.help.result.commands", ["help"], []),
    ("our getmininginfo says another height", "rpc getmininginfo", "rpc",
     "rpc.getmininginfo.result.blocks", None, 7),
    ("our decoderawtransaction says another error", 'rpc decoderawtransaction {"hex": "00"}',
     "rpc", "rpc.decoderawtransaction",
     {"error": {"code": -32603, "message": "Invalid hex data"}},
     {"error": {"code": -22, "message": "Invalid hex string"}}),
    # the widenings of the fuzz findings (dilithion/tools/diff/data/found/README.md)
    ("net 4.5: our node disconnects the sender of a valid block with trailing bytes",
     "send block trailing", "disconnect", "disconnect", False, True),
    ("net D-03: our node disconnects on a bad checksum of a 12-byte command",
     "send pingpingping bad-checksum", "disconnect", "disconnect", False, True),
    ("net D-03: the C++ node hangs on a valid inv", "send inv", "wire", "wire.no-reply",
     True, False),
    ("net D-09: the C++ node hangs on a valid block", "send block", "process", "process",
     "hung", None),
    ("net D-09: our node hangs on the allocation bomb", "send block undecodable", "process",
     "process", None, "hung"),
    ("net 3.7: our node requests another block than the duplicated one", "send inv", "wire",
     "wire.getdata.items", ["2:" + H["V6"], "2:" + H["V6"]], ["2:" + UNKNOWN]),
    ("net 3.6-3.10: the C++ node requests the block of a clean inv we leave out",
     "send inv\\x00x", "wire", "wire.getdata", inv_items("2:" + UNKNOWN), []),
    ("net D-15: a notfound only we send, for the tip, on a NUL-suffixed getdata",
     "send getdata\\x00x", "wire", "wire.notfound",
     [], [{"payload_hex": "0102000000" + bytes.fromhex(H["V6"])[::-1].hex()}]),
    ("cli 3.8: our getblockcount with a parameter answers a height",
     'rpc getblockcount {"height": 1}', "rpc", "rpc.getblockcount", CPP_NOT_INITIALIZED,
     {"result": 8}),
    ("cli 3.8: our parameter error names parameters getblockcount does not take",
     'rpc getblockcount {"x": 1}', "rpc", "rpc.getblockcount", CPP_NOT_INITIALIZED,
     {"error": {"code": -32602, "message": "Unknown parameter x for getblockcount (accepted: height)"}}),
    ("cli 6.3 #29-#32: our getpeerinfo with a parameter answers another error",
     'rpc getpeerinfo {"x": 1}', "rpc", "rpc.getpeerinfo", {"result": []},
     {"error": {"code": -8, "message": "Invalid parameter"}}),
    ("cli 6.3 #37: getnetworkinfo with a parameter is not the constant divergence",
     'rpc getnetworkinfo {"x": 1}', "rpc", "rpc.getnetworkinfo.result.connections", None, 1),
    # storage and processes
    ("a bestblock record that differs otherwise", "restart", "storage",
     "storage.bestblock.value", {"key": "bestblock", "value": "00"},
     {"key": "bestblock", "value": "01"}),
    ("a block record that differs", "restart", "storage", "storage.b.value",
     {"key": "b" + H["V1"], "value": "00"}, {"key": "b" + H["V1"], "value": "01"}),
    ("an index record only we write, of another block", "restart", "storage",
     "storage.i.only-python", None, "i" + H["G8"]),
    ("our node crashes on a block", "send block", "process", "process", None, "crashed"),
    ("our node fails to restart", "restart", "process", "process", None, "failed to restart"),
    ("the C++ node fails to start outside a restart", "send block", "process", "process",
     "failed to restart", None),
]


@pytest.mark.parametrize("why, on, kind, subject, cpp, python", NOT_KNOWN,
                         ids=[case[0] for case in NOT_KNOWN])
def test_a_made_up_difference_is_not_explained_by_the_real_catalogue(catalogue, why, on, kind,
                                                                     subject, cpp, python):
    entry = catalogue.explain(Difference(kind, subject, cpp, python), on)
    assert entry is None, f"{why}: explained by {entry.id}"


# ---- step signatures ------------------------------------------------------------------------
def builtin_step(name: str) -> Step:
    return next(s for s in load_corpus(BUILTIN_CORPUS).steps if s.name.startswith(name))


@pytest.mark.parametrize("name, signature", [
    ("vector block 1", "send block"),
    ("bad proof of work", "send block bad-pow"),
    ("bad nBits", "send block bad-bits"),
    ("bad checksum", "send ping bad-checksum"),
    ("wrong magic", "send ping bad-magic"),
    ("announced size above", "send block bad-size"),
    ("non-NUL 12th command byte", "send pingpingping"),
    ("inv count above", "send inv undecodable"),
    ("inv with trailing bytes", "send inv trailing"),
    ("inv of an unknown tx", "send inv"),
    ("truncated version", "send version undecodable"),
    ("empty block payload", "send block undecodable"),
    ("rpc getblockhash {\"height\": 1}", 'rpc getblockhash {"height": 1}'),
    ("rpc help", "rpc help"),
    ("reconnect at height 6", "reconnect"),
    ("restart both nodes", "restart"),
])
def test_signature_of_builtin_steps(name, signature):
    assert StepSignatures().of(builtin_step(name)) == signature


def test_signature_ignores_the_step_name_and_honest_framing_fields():
    """A field set to its honest value (the testnet magic, the real size and checksum)
    is no malformation; the name never counts."""
    sig = StepSignatures()
    ping = bytes(8)
    honest = Step(1, "wrong magic, bad checksum (it says)", "send", command="ping", payload=ping,
                  magic=sig.params.magic, size=8, checksum=calculate_checksum(ping))
    assert sig.of(honest) == "send ping"
    bad = Step(2, "a fine ping", "send", command="ping", payload=ping, magic=MAINNET_MAGIC,
               size=9, checksum=b"\0\0\0\0")
    assert sig.of(bad) == "send ping bad-magic bad-size bad-checksum"
    assert sig.of(Step(3, "x", "sleep", seconds=1)) == "sleep"
    assert sig.of(Step(4, "x", "fresh")) == "fresh"
    rpc = Step(5, "x", "rpc", method="getblock", params=[1, "a"])
    assert sig.of(rpc) == 'rpc getblock [1, "a"]'


def test_signature_writes_odd_command_bytes_as_escapes():
    assert command_text("a b\\c\x01") == "a\\x20b\\x5cc\\x01"
    assert StepSignatures().of(Step(1, "x", "send", command="tx", payload=b"\x00" * 2_000_000)) \
        == "send tx oversized"


def test_signature_tags_the_payload_of_the_command_both_nodes_dispatch_on():
    """Both nodes read the command field up to its first NUL (the C++ ``GetCommand``), so
    ``inv\\x00x`` is an ``inv`` to both: its payload gets an ``inv``'s tags (fuzz finding
    ``found/inv-nul-suffix-trailing-requests-block.json``)."""
    items = "0102000000" + UNKNOWN
    trailing = Step(1, "x", "send", command="inv\x00x", payload=bytes.fromhex(items + "44"))
    assert StepSignatures().of(trailing) == "send inv\\x00x trailing"
    clean = Step(2, "x", "send", command="inv\x00x", payload=bytes.fromhex(items))
    assert StepSignatures().of(clean) == "send inv\\x00x"


# ---- the loader refuses a matcher that does not name everything ------------------------------
MATCHER = {"on": "'send block'", "kind": "'disconnect'", "subject": "'disconnect'",
           "cpp": "'false'", "python": "'true'"}
CASE = {"on": "'send block'", "kind": "'disconnect'", "subject": "'disconnect'",
        "cpp": "'false'", "python": "'true'"}


def catalogue_text(matcher: dict, case: dict) -> str:
    return ('[[divergence]]\nid = "net 4.5"\nreason = "r"\nexercised = true\n\n'
            "[[divergence.match]]\n" + "".join(f"{k} = {v}\n" for k, v in matcher.items())
            + "\n[[divergence.case]]\n" + "".join(f"{k} = {v}\n" for k, v in case.items()))


@pytest.mark.parametrize("field", list(MATCHER))
def test_a_matcher_missing_a_field_is_refused_naming_entry_and_field(tmp_path, field):
    path = tmp_path / "cat.toml"
    path.write_text(catalogue_text({k: v for k, v in MATCHER.items() if k != field}, CASE))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    line = str(err.value)
    assert "\n" not in line and "net 4.5" in line and f"'{field}'" in line and "match 1" in line


@pytest.mark.parametrize("matcher, case, words", [
    ({**MATCHER, "step": "'block'"}, CASE, ("'step'", "unknown field")),
    (MATCHER, {**CASE, "cpp": "'False'"}, ("case 1", "'cpp'", "not JSON")),
    (MATCHER, {**CASE, "python": "'{\"b\": 1,\"a\": 2}'"}, ("case 1", "'python'", "canonical")),
    ({**MATCHER, "on": "'send (block'"}, CASE, ("'on'", "not a regular expression")),
    ({**MATCHER, "kind": "'tip'"}, CASE, ("'kind'",)),
])
def test_bad_matchers_and_cases_are_refused(tmp_path, matcher, case, words):
    path = tmp_path / "cat.toml"
    path.write_text(catalogue_text(matcher, case))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    for w in words:
        assert w in str(err.value)


def test_an_exercised_entry_without_a_recorded_case_is_refused(tmp_path):
    path = tmp_path / "cat.toml"
    path.write_text(catalogue_text(MATCHER, CASE).split("\n[[divergence.case]]")[0])
    with pytest.raises(CatalogueError, match="needs .* recorded"):
        load_catalogue(path)


def test_the_tool_refuses_a_matcher_without_python_in_one_line(tmp_path):
    path = tmp_path / "cpp-divergences.toml"
    path.write_text(catalogue_text({k: v for k, v in MATCHER.items() if k != "python"}, CASE))
    one_error_line(run_diff("check-catalogue", "--catalogue", str(path)), "'python'", "net 4.5")
    one_error_line(run_diff("run", "--self", "--catalogue", str(path), "--out", str(tmp_path)),
                   "'python'", "net 4.5")


# ---- net D-03: what a side that stopped answering did send is compared --------------------
def test_the_wire_of_a_side_that_leaves_a_step_unanswered_is_still_compared(tmp_path, fake_cpp):
    """The fake C++ node answers ``stall`` with a ``getaddr`` and then leaves that connection
    unanswered (still serving new ones): its getaddr is the step's wire, compared with ours."""
    corpus = corpus_file(tmp_path, [{"name": "stall", "send": "stall"}])
    done = run_diff("run", "--cpp", str(fake_cpp), "--corpus", str(corpus), "--step-timeout", "3",
                    "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stall = next(s for s in report["steps"] if s["name"] == "stall")
    assert stall["on"] == "send stall"
    cpp = stall["observations"]["cpp"]
    assert cpp["no_reply"] is True and cpp["wire"] == {"getaddr": [{"payload_hex": ""}]}
    found = {(d["kind"], d["subject"]): d for d in stall["differences"]}
    getaddr = found[("wire", "wire.getaddr")]
    assert getaddr["python"] == [] and getaddr["known"] is None
    assert stall["outcome"] == "differs (UNEXPLAINED)"
