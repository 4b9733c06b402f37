"""The version of the contracts every artifact and message names."""

CONTRACT_VERSION = "diffpol.v1"
