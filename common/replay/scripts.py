"""The replay's Lua scripts (`lua/*.lua`), registered on one connection.

Every change to more than one key is one script, so Redis runs it atomically: a chunk
is stored whole or not at all, and counters never disagree with what is stored. Each
file starts with the KEYS and ARGV it expects. `forget.lua` is a Lua function shared
by the two scripts that remove chunks (eviction and the dead-letter list).
"""

from __future__ import annotations

from importlib.resources import files

import redis
from redis.commands.core import Script


def _source(name: str) -> str:
    return (files("common.replay") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


class ReplayScripts:
    """The scripts as callables: `script(keys=[...], args=[...], client=pipeline_or_none)`."""

    def __init__(self, client: redis.Redis):
        forget = _source("forget")
        self.insert: Script = client.register_script(_source("insert"))
        self.pick: Script = client.register_script(_source("pick"))
        self.evict: Script = client.register_script(forget + _source("evict"))
        self.mark_ready: Script = client.register_script(_source("mark_ready"))
        self.dead_letter: Script = client.register_script(forget + _source("dead_letter"))
        self.get_bounded: Script = client.register_script(_source("get_bounded"))
