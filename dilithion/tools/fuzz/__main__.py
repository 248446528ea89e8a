"""``python -m dilithion.tools.fuzz``: see :mod:`dilithion.tools.fuzz.cli`."""
from dilithion.tools.fuzz.cli import main

if __name__ == "__main__":
    main()
