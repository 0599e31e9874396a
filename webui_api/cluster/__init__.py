"""Scale-out on Ray Serve (`--ray`): the same app as an ingress deployment in front of worker
replicas that each own one device and one engine.

- `board.py`: the job board, a named Ray actor: which replica runs which job, interrupt/skip
  flags and progress snapshots, so /progress and /interrupt reach the replica running a job.
- `lanes.py`: `RayWorker`, the scheduler lane that sends a work item's RemoteCall to a replica
  (Serve model multiplexing keyed by checkpoint + VAE) and mirrors its progress.
- `deployments.py`: the Serve deployments (ingress, worker) and the application builder.
- `launch.py`: `serve_ray(settings)`, what `launch.py --ray` runs.

Only this package imports Ray, and only `--ray` imports this package: the server runs without
Ray installed.
"""
