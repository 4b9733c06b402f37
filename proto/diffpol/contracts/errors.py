class ContractError(ValueError):
    """Data that does not follow a diffpol contract. The message names what is wrong."""
