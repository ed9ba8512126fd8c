"""Sub-commands of the ``segdeep`` CLI; each module defines ``add_parser(subparsers)``."""
