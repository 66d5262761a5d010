"""The operator's tools, apart from the shared kit: the `inferbus` command (`up`, `req`,
`nodes`) and the runtime simulator.

Unlike `services`, this package may read the worker's and the router's settings models
(`inferbus up` writes their config files from them); it still starts those processes by
module, never runs them in its own.
"""
