"""Entry point of `python -m core.demo`; see `core.demo.cli`."""
from core.demo.cli import main

if __name__ == "__main__":
    main()
