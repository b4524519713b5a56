-- Assigns a room's next message id and publishes the message, atomically:
-- Redis runs one script at a time, so the order of PUBLISH on the room's
-- channel is the order of the ids, for every subscriber of every instance.
--
-- The id is a ULID (26 Crockford base32 characters, 48-bit millisecond time
-- then 80 random bits), monotonic per room: a new millisecond (Redis clock)
-- starts from the caller's random bits; within the same millisecond as the
-- room's last id, or when the clock is behind it, the id is the last id plus
-- one. ULIDs compare as strings in time order, so "greater" is plain string
-- comparison.
--
-- KEYS[1]  the room's last id (string)
-- KEYS[2]  the room's channel (declared so that a cluster routes the script
--          to the slot of the room's hash tag)
-- ARGV[1]  payload head (kind + origin instance)
-- ARGV[2]  payload tail (token + JSON body)
-- ARGV[3]  floor: the origin's last id of the room ('' for none); the new id
--          is greater, so a room that was sequenced locally during an outage
--          keeps increasing ids
-- ARGV[4]  16 random base32 characters
-- ARGV[5]  expiry of the last-id key, in milliseconds
-- Returns the id.
local A = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ts = ''
for _ = 1, 10 do
  local d = ms % 32
  ts = string.sub(A, d + 1, d + 1) .. ts
  ms = (ms - d) / 32
end
local last = redis.call('GET', KEYS[1])
if ARGV[3] ~= '' and (not last or ARGV[3] > last) then
  last = ARGV[3]
end
local id
if last and string.sub(last, 1, 10) >= ts then
  local chars = {}
  for i = 1, 26 do
    chars[i] = string.sub(last, i, i)
  end
  local i = 26
  while i >= 1 do
    local d = string.find(A, chars[i], 1, true)
    if d < 32 then
      chars[i] = string.sub(A, d + 1, d + 1)
      break
    end
    chars[i] = '0'
    i = i - 1
  end
  id = table.concat(chars)
else
  id = ts .. ARGV[4]
end
redis.call('SET', KEYS[1], id, 'PX', ARGV[5])
redis.call('PUBLISH', KEYS[2], ARGV[1] .. id .. ARGV[2])
return id
