-- Moves the end of an active incident one day later: spec.expiresAt becomes the end the
-- controller computed (status.expiresAt) plus a day, at most 100 days after its start
-- (status.startsAt, or its creation), the longest the controller lets an incident last. spec.duration goes: it and expiresAt are
-- alternatives. It never shortens an incident, and refuses rather than guess.
--
-- Argo CD runs this without Lua's string library, so a time is read by a binary search
-- for the second whose RFC 3339 text (built from numbers with ..) equals it: texts of
-- that one shape sort as the times they name.
local os = require("os")

local DAY = 86400
local STEP = DAY
local LONGEST = 100 * DAY
-- spec.expiresAt lies in the years 2000 to 2999 (the CRD's pattern).
local YEAR_2000, YEAR_3000 = 946684800, 32503680000

local function div(a, b)
  return (a - a % b) / b
end

local function two_digits(n)
  if n < 10 then
    return "0" .. n
  end
  return "" .. n
end

-- Unix seconds as Kubernetes writes a time: UTC, to the second. The calendar date is
-- Howard Hinnant's civil_from_days.
local function rfc3339(t)
  local seconds_of_day = t % DAY
  local z = div(t, DAY) + 719468
  local era = div(z, 146097)
  local day_of_era = z - era * 146097
  local year_of_era = div(day_of_era - div(day_of_era, 1460) + div(day_of_era, 36524) - div(day_of_era, 146096), 365)
  local day_of_year = day_of_era - (365 * year_of_era + div(year_of_era, 4) - div(year_of_era, 100))
  local shifted_month = div(5 * day_of_year + 2, 153)
  local day = day_of_year - div(153 * shifted_month + 2, 5) + 1
  local month = shifted_month < 10 and shifted_month + 3 or shifted_month - 9
  local year = year_of_era + era * 400
  if month <= 2 then
    year = year + 1
  end
  return year .. "-" .. two_digits(month) .. "-" .. two_digits(day)
    .. "T" .. two_digits(div(seconds_of_day, 3600)) .. ":" .. two_digits(div(seconds_of_day % 3600, 60))
    .. ":" .. two_digits(seconds_of_day % 60) .. "Z"
end

-- The Unix second `text` names, or nil unless it is a time of the years 2000 to 2999 in
-- exactly that shape.
local function seconds(text)
  if type(text) ~= "string" then
    return nil
  end
  local low, high = YEAR_2000, YEAR_3000
  while low < high do
    local middle = div(low + high, 2)
    if rfc3339(middle) < text then
      low = middle + 1
    else
      high = middle
    end
  end
  if rfc3339(low) == text then
    return low
  end
  return nil
end

local function refuse(why)
  error("cannot extend: " .. why, 0)
end

local status = obj.status or {}
if obj.spec.resolved == true then
  refuse("the incident is resolved")
end
if obj.metadata.deletionTimestamp ~= nil then
  refuse("the incident is being deleted")
end
if status.expiresAt == nil then
  refuse("the incident has no end to move (neither spec.duration nor spec.expiresAt)")
end
if status.observedGeneration ~= obj.metadata.generation then
  refuse("the controller has not yet seen the latest change to this incident; try again in a moment")
end
local ends = seconds(status.expiresAt)
local created = seconds(obj.metadata.creationTimestamp)
if ends == nil or created == nil then
  refuse("cannot read status.expiresAt " .. tostring(status.expiresAt)
    .. " and metadata.creationTimestamp " .. tostring(obj.metadata.creationTimestamp))
end
-- An incident lasts at most 100 days from its start: spec.startsAt, or its creation.
local start, start_name = created, "its creation"
if status.startsAt ~= nil then
  start, start_name = seconds(status.startsAt), "its start"
  if start == nil then
    refuse("cannot read status.startsAt " .. tostring(status.startsAt))
  end
  if start > os.time() then
    refuse("the incident has not started yet (it starts at " .. status.startsAt
      .. "); change spec.duration or spec.expiresAt instead")
  end
end
if status.effectiveMode == "Normal" or ends <= os.time() then
  refuse("the incident ended at " .. status.expiresAt .. "; declare a new one")
end
local latest = start + LONGEST
if ends >= latest then
  refuse("the incident already ends at " .. status.expiresAt
    .. ", 100 days after " .. start_name .. ": the longest an incident may last")
end
local later = ends + STEP
if later > latest then
  later = latest
end
obj.spec.expiresAt = rfc3339(later)
obj.spec.duration = nil
return obj
