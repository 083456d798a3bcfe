"""Learned tokens shared by the nodes of a cluster: what ``mailgate learn`` or auto-learning
teaches any node counts on every node.

Each node keeps the table it was given (shipped, trained or updated); what is learned on
site goes to Redis instead of the node's own table: per-token counts of learned spam and ham
(``bayes:spam``, ``bayes:ham``), the number of learned messages of each class, and the digest
of every learned message with its class (``bayes:learned``), so that learning again, moving a
message to the other class and ``--forget`` stay exact. One Lua script applies a message,
so counts are exact however many nodes learn at once. ``bayes:version`` grows with every
change; a scanner fetches the counts again when it moved (at most every ``REFRESH`` seconds)
and scores with its table plus them. When Redis does not answer, a node learns into its own
table (as a single node does) and scores with the last counts it fetched.
"""

from __future__ import annotations

import time

from mailgate.runtime.cluster import LOCAL, Cluster
from mailgate.scan.spam import bayes

REFRESH = 5.0

LEARN = """
local digest, class, tokens = ARGV[1], ARGV[2], #ARGV - 2
local before = redis.call('HGET', KEYS[1], digest)
if before == class then return 'already' end
local function apply(which, step)
    redis.call('HINCRBY', KEYS[5], which, step)
    local hash = which == '1' and KEYS[2] or KEYS[3]
    for i = 3, #ARGV do
        local n = redis.call('HINCRBY', hash, ARGV[i], step)
        if n <= 0 then redis.call('HDEL', hash, ARGV[i]) end
    end
end
if before then apply(before, -1) end
if class == 'forget' then
    if not before then return 'unknown' end
    redis.call('HDEL', KEYS[1], digest)
    redis.call('INCR', KEYS[4])
    return 'forgotten'
end
apply(class, 1)
redis.call('HSET', KEYS[1], digest, class)
redis.call('INCR', KEYS[4])
if before then return 'moved' end
return 'learned'
"""


def _encoded(tokens: set[str]) -> list[bytes]:
    return sorted(t.encode("utf-8", "surrogateescape") for t in tokens)


class SharedTokens:
    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.version: int | None = None
        self.checked = 0.0
        self.spam: dict[str, int] = {}
        self.ham: dict[str, int] = {}
        self.totals: tuple[int, int] = (0, 0)

    def _keys(self) -> list[str]:
        key = self.cluster.key
        return [
            key("bayes", "learned"),
            key("bayes", "spam"),
            key("bayes", "ham"),
            key("bayes", "version"),
            key("bayes", "messages"),
        ]

    def learn(self, digest: str, tokens: set[str], is_spam: bool | None) -> str | object:
        """Apply one message (``is_spam`` None: forget it): what happened, or ``LOCAL``."""
        cls = "forget" if is_spam is None else ("1" if is_spam else "0")
        keys = self._keys()
        return self.cluster.run(
            lambda r: r.eval(LEARN, len(keys), *keys, digest, cls, *_encoded(tokens)).decode()
        )

    def refresh(self) -> bool:
        """Fetch the learned counts when they changed; True when they did."""
        now = time.monotonic()
        if now - self.checked < REFRESH:
            return False
        self.checked = now
        keys = self._keys()
        version = self.cluster.run(lambda r: r.get(keys[3]))
        if version is LOCAL:
            return False
        version = int(version or 0)
        if version == self.version:
            return False

        def fetch(client):
            pipe = client.pipeline(transaction=True)
            pipe.get(keys[3])
            pipe.hgetall(keys[1])
            pipe.hgetall(keys[2])
            pipe.hgetall(keys[4])
            return pipe.execute()

        found = self.cluster.run(fetch)
        if found is LOCAL:
            return False
        version, spam, ham, messages = found
        self.version = int(version or 0)
        self.spam = {k.decode("utf-8", "surrogateescape"): int(v) for k, v in spam.items()}
        self.ham = {k.decode("utf-8", "surrogateescape"): int(v) for k, v in ham.items()}
        self.totals = (int(messages.get(b"1", 0)), int(messages.get(b"0", 0)))
        return True

    def merged(self, base: bayes.Model) -> bayes.Model:
        """``base`` with the cluster's learned counts added (``base`` is left as it is)."""
        if not self.spam and not self.ham and self.totals == (0, 0):
            return base
        counts = {tok: list(pair) for tok, pair in base.counts.items()}
        for index, learned in ((0, self.spam), (1, self.ham)):
            for tok, n in learned.items():
                counts.setdefault(tok, [0, 0])[index] += n
        return bayes.Model(base.nspam + self.totals[0], base.nham + self.totals[1], counts)
