-- wrk script: BEP 3 announces from 1,000 rotating peers of one swarm (compact, numwant 50).
-- INFO_HASH (URL-encoded) and EXTRA (extra query, may be empty) come from the environment.
local info_hash = os.getenv("INFO_HASH")
local extra = os.getenv("EXTRA") or ""
local n = 0

request = function()
  n = n + 1
  local peer = string.format("-WK0001-%012d", n % 1000)
  local path = "/announce?info_hash=" .. info_hash .. "&peer_id=" .. peer ..
    "&port=" .. (6000 + n % 1000) .. "&uploaded=0&downloaded=0&left=1000&compact=1&numwant=50" .. extra
  return wrk.format("GET", path)
end
