-- The Redis clock, read on the node that stamps invalidations: KEYS[1] is a tag-state key, so
-- in a Cluster this runs on the owner of the tag slot (plain TIME would go to any node).
return redis.call('TIME')
