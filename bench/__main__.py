"""Run every benchmark and print its figures."""

from __future__ import annotations

import logging
import sys

from .figures import print_figures


def main() -> int:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING)
    from . import (calibration_bench, conversation_bench, engine_bench, escalation_bench, eval_bench, http_bench,
                   kb_bench, load_bench, overload_bench, screenshot_bench, security_bench)

    figures = []
    for module in (escalation_bench, engine_bench, conversation_bench, http_bench, load_bench, overload_bench,
                   security_bench, screenshot_bench, kb_bench, calibration_bench, eval_bench):
        figures.extend(module.run())
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
