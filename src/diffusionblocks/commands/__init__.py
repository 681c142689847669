"""The command line, one module per command (``cli.main`` assembles them); ``flags`` maps every
config field to a flag."""
