"""Entry point of `python -m demo`; see `demo.cli`."""
from demo.cli import main

if __name__ == "__main__":
    main()
