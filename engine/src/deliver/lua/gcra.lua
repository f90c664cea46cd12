-- GCRA over several limits of one delivery server at once, on Redis's clock.
-- KEYS[i]: the theoretical arrival time (microseconds) of limit i.
-- ARGV[2i-1], ARGV[2i]: limit i's emission interval and tolerance (microseconds).
-- Returns 0 when one message may go (its place is then taken in every limit),
-- else how many microseconds to wait before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  tats[i] = tat
  local w = tat - tonumber(ARGV[2 * i]) - now
  if w > wait then wait = w end
end
if wait > 0 then
  return math.ceil(wait)
end
for i, key in ipairs(KEYS) do
  local tat = tats[i] + tonumber(ARGV[2 * i - 1])
  -- The key outlives its use by a second: an idle server's key goes away.
  local ttl_ms = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl_ms)
end
return 0
