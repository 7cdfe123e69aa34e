"""Enterprise scans on Celery workers (SONGSCAN_BROKER_URL; docs/scale-out.md, "Workers").

- `dispatch`: the API node's side, the executor of `scan._run_units` when a broker is set.
- `tasks`: the Celery app both sides configure alike, the task, and `songscan worker`.
- `media_link`: how a worker reads a scan's media from its API node (signed range requests).
- `wire`: the JSON the runs and their results travel as.
"""
