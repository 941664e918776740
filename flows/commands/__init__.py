"""The flows' command lines (`python -m flows.<flow>`): each checks its input and plans before its flow's module
imports Prefect (see `flows.cli.FlowCommand`), and never imports that module itself: the flow hands itself over."""
