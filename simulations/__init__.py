"""Multi-bank runs on one machine: partitioners, scenarios, reports."""
