-- Connection leases of one delivery server, on Redis's clock.
-- KEYS[1]: sorted set of leases (member: lease id, score: expiry in ms).
-- ARGV[1]: lease id; ARGV[2]: max connections; ARGV[3]: lease time in ms.
-- Returns 1 when the lease is taken or renewed, 0 when the server has its
-- maximum of live leases. A lease not renewed in time expires, so a killed
-- node's connections stop counting on their own; one Redis lost (a restart)
-- is taken again on renewal if there is room, else it is lost.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local max = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
    and redis.call('ZCARD', KEYS[1]) >= max then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
