"""`python -m lancet_ds ...` and `deepspeed --module lancet_ds ...` run the CLI."""

from lancet_ds.cli import main

if __name__ == "__main__":
    main()
