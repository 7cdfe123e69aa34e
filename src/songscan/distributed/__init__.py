"""Enterprise scans on Celery workers (SONGSCAN_BROKER_URL; docs/scale-out.md, "Workers").

- `dispatch`: the API node's side, the executor of `scan._run_units` when a broker is set.
- `celery_app`: the Celery app, configured alike by both sides.
- `tasks`: the task a worker runs, and `songscan worker`.
- `media_link`: how a worker reads a scan's media from its API node (signed range requests).
- `wire`: the JSON the runs and their results travel as.
"""
