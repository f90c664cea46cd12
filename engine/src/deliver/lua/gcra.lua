-- GCRA over several limits of one delivery server at once, on Redis's clock,
-- granting up to a block of messages per call.
-- KEYS[i]: the theoretical arrival time (microseconds) of limit i.
-- ARGV[1]: how many messages the caller would like (at least 1).
-- ARGV[2i], ARGV[2i+1]: limit i's emission interval and tolerance (microseconds).
-- Returns {granted, wait}: granted > 0 messages may go now (their places are
-- taken in every limit, exactly as `granted` calls for one would have taken
-- them); granted = 0: wait microseconds before asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local granted = math.max(1, math.floor(tonumber(ARGV[1])))
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  tats[i] = tat
  local room = now + tolerance - tat
  if room < 0 then
    if -room > wait then wait = -room end
    granted = 0
  elseif interval > 0 then
    -- The k-th message of the block is due at tat + (k-1) * interval.
    granted = math.min(granted, math.floor(room / interval) + 1)
  end
end
if granted == 0 then
  return {0, math.ceil(wait)}
end
for i, key in ipairs(KEYS) do
  local tat = tats[i] + granted * tonumber(ARGV[2 * i])
  -- The key outlives its use by a second: an idle server's key goes away.
  local ttl_ms = math.ceil((tat - now) / 1000) + 1000
  redis.call('SET', key, string.format('%.0f', tat), 'PX', ttl_ms)
end
return {granted, 0}
