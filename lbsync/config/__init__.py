"""Configuration, the bottom layer (it imports nothing else from lbsync).

schema     the sections and their keys, each declared once: default, doc, reader
parse      the YAML-loaded data read by the schema into a Config, every problem in one error
load       where the file is looked for, and reading it
values     the value readers (durations, paths, addresses, names, ...); selectors: label
           selectors and the proxy; durations; hosts: the host grammar; reading, errors
"""
