-- The nodes that use the fleet's throttles, on Redis's clock.
-- KEYS[1]: sorted set of node names (score: last seen in ms).
-- ARGV[1]: this node; ARGV[2]: how long a node counts after it was last seen (ms).
-- Returns how many nodes were seen within that time, this one included.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
