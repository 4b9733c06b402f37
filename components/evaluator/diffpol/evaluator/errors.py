"""Errors the evaluator raises for bad input, before any episode runs."""

from diffpol.contracts.errors import ContractError


class EvaluationConfigError(ContractError):
    """An argument of an evaluation is invalid; the message names it and says what is expected."""
