"""The job around the stages: plan, run through Ray Data, collect per shard, sweep, the command line."""
