"""Recipes on the lock service's locks (leader election, a counting semaphore, a
read-write lock): the public names of ``lockmgr.service.client.recipes``.

Example::

    with client.leadership("jobs/compactor") as lead:
        while not lead.lost.is_set():
            compact(fencing_token=lead.token)

docs/recipes.md.
"""

from .service.client.recipes import Holding, Leadership, ReadWriteLock, Semaphore, recipe_path

__all__ = ["Leadership", "Semaphore", "ReadWriteLock", "Holding", "recipe_path"]
