"""The embedded lock manager: LockManager and Transaction over one table in one process."""
