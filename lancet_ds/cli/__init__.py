"""The `lancet-ds` command line: one click group, each subcommand a thin call into the library.

Every subcommand runs as a plain process (one rank) and under the DeepSpeed launcher
(`deepspeed --num_gpus N --module lancet_ds <subcommand> ...`), which adds `--local_rank`.
"""


from __future__ import annotations

import sys

import click

from lancet_ds import __version__
from lancet_ds.cli.stages import STAGE_COMMANDS, factors, scores
from lancet_ds.cli.tools import bench_cmd, data, demo_world_cmd, job, plan_cmd, train_cmd
from lancet_ds.errors import LancetError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True,
              help="Set by the deepspeed launcher.")
@click.version_option(__version__, prog_name="lancet-ds")
def cli(local_rank):
    """LANCET under DeepSpeed ZeRO-3: find the training data behind a model's bad behaviour, and fix it."""



for command in (data, train_cmd, demo_world_cmd, *STAGE_COMMANDS.values(), factors, scores, job, bench_cmd, plan_cmd):
    cli.add_command(command)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on `argv`; a `LancetError` becomes its message and exit code. Returns the code."""
    from lancet_ds import distributed as dist_utils

    code, together = 1, False
    try:
        cli.main(args=argv, prog_name="lancet-ds", standalone_mode=False)
        code = 0
    except click.exceptions.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort)
        code = 130
        if dist_utils.is_main():
            click.echo("interrupted. Rerun the same command to go on: finished stages are kept, and an interrupted "
                       "one resumes from its last saved progress where it keeps any.", err=True)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except LancetError as exc:
        click.echo(f"error: {exc}", err=True)
        code, together = exc.exit_code, getattr(exc, "on_every_rank", False)
    finally:
        dist_utils.shutdown(together=code == 0 or together)
    return code


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
