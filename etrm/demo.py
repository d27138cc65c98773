"""Placeholder main job until `etrm investigate` exists."""


def add_parser(subparsers):
    p = subparsers.add_parser("demo", help="run one ACT step of a tiny model")
    p.set_defaults(func=lambda args: print("etrm demo"))
