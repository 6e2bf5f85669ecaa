"""`python -m portguard`."""

from portguard.cli import run

if __name__ == "__main__":
    run()
