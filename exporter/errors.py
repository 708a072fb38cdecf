"""One exception type for every user mistake, so the CLI can print it as a sentence, not a traceback."""


class ExporterError(Exception):
    """A problem the user can fix: `problem` says what is wrong, `fix` says what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")
        self.problem = problem
        self.fix = fix
