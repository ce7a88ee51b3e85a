"""The replicated chat application: commands, their deterministic apply on a
SQLite connection, and the read queries. Knows nothing of Raft.

- ``commands``: the command and result types, and their encoding;
- ``ChatMachine``: applies commands inside the caller's transaction;
- ``ConversationView``: each conversation's newest message and unread counts,
  derived from the tables, published by the machine after each commit;
- ``queries``: what clients read;
- ``rules``: names, passwords, message bodies;
- ``passwords``: argon2id hashing and verification;
- ``schema``: the tables, row hashes and the state digest.
"""

from . import commands, queries, rules, schema
from .machine import ChatMachine
from .view import ConversationView

__all__ = ["ChatMachine", "ConversationView", "commands", "queries", "rules", "schema"]
