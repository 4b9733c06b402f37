class ContractError(ValueError):
    """Data that does not follow a diffpol contract. The message names what is wrong."""


class ArtifactError(ContractError):
    """A model file that is not a valid diffpol sampler artifact."""
