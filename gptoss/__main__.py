import sys

from gptoss.cli.main import main

if __name__ == "__main__":  # not when re-imported as __mp_main__ by a spawned tensor parallel rank
    sys.exit(main())
