"""Reward functions used by the tests through the import-path plug-in mechanism."""


def fails_on_odd_length(completions, answer, **_):
    """Raises for any batch containing an odd-length completion: exercises per-sample isolation."""
    for c in completions:
        if len(c) % 2 == 1:
            raise RuntimeError("odd length")
    return [1.0 for _ in completions]


def hangs_on_x(completions, **_):
    import time

    if any("x" in c for c in completions):
        time.sleep(60)
    return [0.5 for _ in completions]


def hangs_uninterruptibly_on_x(completions, **_):
    """Blocks the timeout signal first: only killing the worker process can end it."""
    import signal
    import time

    if any("x" in c for c in completions):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return [0.5 for _ in completions]


def trl_style(prompts, completions, completion_ids, answer, **kwargs):
    """Written to TRL's documented signature: reads prompts and completion_ids."""
    return [float(len(ids) == len(text) + 1 and isinstance(p, (str, list)) and text == a)
            for p, text, ids, a in zip(prompts, completions, completion_ids, answer)]


def nan_on_empty(completions, **_):
    return [float("nan") if not c else 1.0 for c in completions]
