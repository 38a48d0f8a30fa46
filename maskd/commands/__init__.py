"""One module per `maskd` sub-command; each exposes ``main(args) -> int``."""
