"""Errors services raise for bad input; views turn them into 422 forms."""


class ValidationError(Exception):
    """Bad input; `errors` maps a form field (or "__all__") to a message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
