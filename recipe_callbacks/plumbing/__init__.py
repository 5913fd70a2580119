"""The plumbing every recipe callback shares: the base class, Findings, batch resolution, logging,
observing, short copy trainings, argument checks, the run record and the report's renderings.

A new callback needs none of it written again; the package's top level is the recipe itself.
"""
