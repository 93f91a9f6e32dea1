"""Offline console scripts: argparse and one call each."""
