"""Run a step from a Snakemake `script:` rule: the job's threads, all output to the rule's log, bad input as one line."""

import contextlib
import os
import sys
import traceback
from pathlib import Path

from yolo_w4.errors import UserError
from yolo_w4.threads import set_threads


def run_rule(snakemake, step, threads=None, **kwargs):
    """Call `step(**kwargs)` with the job's threads applied and stdout/stderr in `snakemake.log[0]`.

    threads: what the step computes with (`yolo_w4.threads.set_threads`); None: the job's, `snakemake.threads`.
    A UserError is printed as one line on the real stderr (and in the log) and exits 2; Snakemake then removes
    the job's outputs, so no partial artifact remains.
    """
    applied = set_threads(snakemake.threads if threads is None else threads)
    log_path = snakemake.log[0]
    # Ultralytics writes a settings file on first import: keep it in the run folder, not $HOME.
    settings_dir = Path("results", snakemake.config["run_id"], ".ultralytics").resolve()
    os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    real_stderr = sys.stderr
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"threads: {applied} (Snakemake job threads: {snakemake.threads})")
        try:
            return step(**kwargs)
        except UserError as error:
            print(f"error: {error}", file=log)
            print(f"error: {error}", file=real_stderr)
            sys.exit(2)
        except Exception:
            traceback.print_exc(file=log)
            print(f"error: {snakemake.rule} failed; see {log_path}", file=real_stderr)
            raise
