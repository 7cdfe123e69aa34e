"""Live stream monitoring (AudD's streams API): the records (`store`), the `[streams]`
settings, what opens a stream (`source`), the windows-to-plays logic (`plays`), a stream's
listener (`listener`), callback delivery (`callbacks`) and the per-process scheduler that
leases streams to listeners (`supervisor`). The HTTP methods are `songscan.api.streams`.
"""
