-- Runs one Argo CD health, discovery or action script the way Argo CD runs the scripts of
-- argocd-cm (util/lua/lua.go, runLuaWithResourceActionParameters): on Lua 5.1 with only
-- the base, table and package libraries, and Argo's "safe" os (util/lua/oslib_safe.go:
-- time and date) through require("os") only (OpenSafeOs registers it under the table
-- library's name, which is taken, so the global os stays nil); the object as the global
-- obj, an empty actionParams, a 1 s limit. No string library: the global string is
-- absent and strings have no methods, as in gopher-lua without it.
--
--   lua5.1 sandbox.lua SCRIPT [NOW] < object.json
--
-- prints one line of JSON: {"result": <what the script returned, encoded as Argo's
-- gopher-json encodes it>} or {"error": "<message>"}. NOW (Unix seconds) freezes the
-- clock; without it, reading the clock is an error, so no test depends on the real time.
-- Known differences from gopher-lua: other error texts for runtime errors (gopher-lua
-- says "attempt to index a non-table object(string)", Lua 5.1 "attempt to index a string
-- value"), and numbers of more than 14 significant digits turn into other strings.

-- The string functions this file needs, kept before the script runs without them.
local format, byte, char, sub, find = string.format, string.byte, string.char, string.sub, string.find
local gsub, match, lower = string.gsub, string.match, string.lower
local floor, huge = math.floor, math.huge
local concat, insert = table.concat, table.insert
local real_os, real_getfenv, real_setfenv, real_tostring = os, getfenv, setfenv, tostring
local real_loadstring, real_loadfile = loadstring, loadfile
local stderr, stdout = io.stderr, io.stdout

local script_path, now_argument = arg[1], arg[2]
if not script_path then
  stderr:write("usage: lua5.1 sandbox.lua SCRIPT [NOW] < object.json\n")
  real_os.exit(2)
end

local function harness_failure(message)
  stderr:write("sandbox.lua: ", message, "\n")
  real_os.exit(2)
end

-- JSON in, as Argo's decodeValue turns an object into Lua values: a null is dropped (a
-- key whose value is null is absent; a null array element is skipped).
local function decode(text)
  local pos = 1
  local function fail(what)
    harness_failure(format("input is not JSON at byte %d: %s", pos, what))
  end
  local function skip_space()
    pos = find(text, "[^ \t\r\n]", pos) or #text + 1
  end
  local function utf8(code)
    if code < 0x80 then
      return char(code)
    elseif code < 0x800 then
      return char(0xC0 + floor(code / 0x40), 0x80 + code % 0x40)
    elseif code < 0x10000 then
      return char(0xE0 + floor(code / 0x1000), 0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
    end
    return char(0xF0 + floor(code / 0x40000), 0x80 + floor(code / 0x1000) % 0x40,
      0x80 + floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
  end
  local simple_escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function hex4(at)
    local digits = sub(text, at, at + 3)
    if not find(digits, "^%x%x%x%x$") then
      fail("bad \\u escape")
    end
    return tonumber(digits, 16)
  end
  local function read_string()
    local parts = {}
    pos = pos + 1
    while true do
      local special = find(text, '["\\]', pos)
      if not special then
        fail("unterminated string")
      end
      insert(parts, sub(text, pos, special - 1))
      if sub(text, special, special) == '"' then
        pos = special + 1
        return concat(parts)
      end
      local escape = sub(text, special + 1, special + 1)
      if escape == "u" then
        local code = hex4(special + 2)
        pos = special + 6
        if code >= 0xD800 and code < 0xDC00 then
          if sub(text, pos, pos + 1) ~= "\\u" then
            fail("lone surrogate")
          end
          local low = hex4(pos + 2)
          if low < 0xDC00 or low > 0xDFFF then
            fail("bad surrogate pair")
          end
          code = 0x10000 + (code - 0xD800) * 0x400 + (low - 0xDC00)
          pos = pos + 6
        end
        insert(parts, utf8(code))
      elseif simple_escapes[escape] then
        insert(parts, simple_escapes[escape])
        pos = special + 2
      else
        fail("bad escape")
      end
    end
  end
  local read_value
  local function read_container(close, read_entry)
    pos = pos + 1
    skip_space()
    if sub(text, pos, pos) == close then
      pos = pos + 1
      return
    end
    while true do
      read_entry()
      skip_space()
      local separator = sub(text, pos, pos)
      pos = pos + 1
      if separator == close then
        return
      elseif separator ~= "," then
        fail("expected , or " .. close)
      end
    end
  end
  function read_value()
    skip_space()
    local first = sub(text, pos, pos)
    if first == "{" then
      local object = {}
      read_container("}", function()
        skip_space()
        if sub(text, pos, pos) ~= '"' then
          fail("expected a key")
        end
        local key = read_string()
        skip_space()
        if sub(text, pos, pos) ~= ":" then
          fail("expected :")
        end
        pos = pos + 1
        object[key] = read_value()
      end)
      return object
    elseif first == "[" then
      local array = {}
      read_container("]", function()
        local element = read_value()
        if element ~= nil then
          insert(array, element)
        end
      end)
      return array
    elseif first == '"' then
      return read_string()
    end
    local literals = { ["true"] = true, ["false"] = false }
    for literal, value in pairs(literals) do
      if sub(text, pos, pos + #literal - 1) == literal then
        pos = pos + #literal
        return value
      end
    end
    if sub(text, pos, pos + 3) == "null" then
      pos = pos + 4
      return nil
    end
    local number = match(text, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if not number or not tonumber(number) then
      fail("unexpected character")
    end
    pos = pos + #number
    return tonumber(number)
  end
  local value = read_value()
  skip_space()
  if pos <= #text then
    fail("trailing characters")
  end
  return value
end

-- JSON out, as gopher-json encodes a Lua value (layeh.com/gopher-json, json.go): an empty
-- table is [], a table whose first key is a number an array (1..n, no gaps), one with
-- string keys an object; a table met twice fails, even without a cycle.
local function encode(value)
  local visited = {}
  local out = {}
  local function encode_string(s)
    insert(out, '"')
    insert(out, (gsub(s, '[%c"\\]', function(c)
      if c == '"' or c == "\\" then
        return "\\" .. c
      end
      return format("\\u%04x", byte(c))
    end)))
    insert(out, '"')
  end
  local function walk(v)
    local kind = type(v)
    if kind == "nil" then
      insert(out, "null")
    elseif kind == "boolean" then
      insert(out, real_tostring(v))
    elseif kind == "number" then
      if v ~= v then
        error("json: unsupported value: NaN", 0)
      elseif v == huge or v == -huge then
        error("json: unsupported value: " .. (v > 0 and "+Inf" or "-Inf"), 0)
      elseif v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
        insert(out, format("%d", v))
      else
        insert(out, format("%.17g", v))
      end
    elseif kind == "string" then
      encode_string(v)
    elseif kind == "table" then
      if visited[v] then
        error("cannot encode recursively nested tables to JSON", 0)
      end
      visited[v] = true
      local count, numbers, strings = 0, 0, 0
      for key in pairs(v) do
        count = count + 1
        if type(key) == "number" then
          numbers = numbers + 1
        elseif type(key) == "string" then
          strings = strings + 1
        end
      end
      if count == 0 then
        insert(out, "[]")
      elseif numbers == count then
        for i = 1, count do
          if v[i] == nil then
            error("cannot encode sparse array", 0)
          end
        end
        insert(out, "[")
        for i = 1, count do
          if i > 1 then
            insert(out, ",")
          end
          walk(v[i])
        end
        insert(out, "]")
      elseif strings == count then
        local keys = {}
        for key in pairs(v) do
          insert(keys, key)
        end
        table.sort(keys)
        insert(out, "{")
        for i, key in ipairs(keys) do
          if i > 1 then
            insert(out, ",")
          end
          encode_string(key)
          insert(out, ":")
          walk(v[key])
        end
        insert(out, "}")
      else
        error("cannot encode mixed or invalid key types", 0)
      end
    else
      error("cannot encode " .. kind .. " to JSON", 0)
    end
  end
  walk(value)
  return concat(out)
end

local frozen_now = now_argument and tonumber(now_argument)
if now_argument and not frozen_now then
  harness_failure("NOW must be Unix seconds, not " .. now_argument)
end
local function now()
  if not frozen_now then
    error("the script read the clock, but this run froze none: pass NOW (Unix seconds)", 0)
  end
  return frozen_now
end

-- Argo's os.time: now, or a date table read with defaults (hour 12, the rest 0 or -1) in
-- the server's local time zone; fields that are not numbers take their default.
local function argo_time(date)
  if date == nil then
    return now()
  end
  local function field(name, default)
    local v = rawget(date, name)
    return type(v) == "number" and v or default
  end
  return real_os.time({
    year = field("year", -1), month = field("month", -1), day = field("day", -1),
    hour = field("hour", 12), min = field("min", 0), sec = field("sec", 0),
  })
end

-- Argo's strftime (oslib_safe.go): a fixed set of flags, each rendered through a Go time
-- layout; "%a" is the Go layout "mon", which Go prints as the literal text "mon".
local function argo_strftime(layout, when, utc)
  local prefix = utc and "!" or ""
  local function c(flag)
    return real_os.date(prefix .. flag, when)
  end
  local zone = utc and "UTC" or c("%Z")
  local flags = {
    a = function() return "mon" end,
    A = function() return c("%A") end,
    b = function() return c("%b") end,
    B = function() return c("%B") end,
    c = function() return c("%d %b %y %H:%M ") .. zone end,
    d = function() return c("%d") end,
    F = function() return c("%Y-%m-%d") end,
    H = function() return c("%H") end,
    I = function() return c("%I") end,
    m = function() return c("%m") end,
    M = function() return c("%M") end,
    p = function() return c("%p") end,
    P = function() return lower(c("%p")) end,
    S = function() return c("%S") end,
    x = function() return c("%H/%M/%S") end,
    X = function() return c("%H:%M:%S") end,
    y = function() return c("%y") end,
    Y = function() return c("%Y") end,
    z = function() return utc and "+0000" or c("%z") end,
    Z = function() return zone end,
    w = function() return c("%w") end,
  }
  local out, i = {}, 1
  while i <= #layout do
    local ch = sub(layout, i, i)
    if ch == "%" and i < #layout then
      local flag = sub(layout, i + 1, i + 1)
      if flag == "%" then
        insert(out, "%")
      elseif flags[flag] then
        insert(out, flags[flag]())
      else
        insert(out, "%" .. flag)
      end
      i = i + 2
    else
      insert(out, ch)
      i = i + 1
    end
  end
  return concat(out)
end

-- Argo's os.date: a leading "!" means UTC, but only for the current time: an explicit
-- time is always rendered in the server's local time zone.
local function argo_date(layout, when)
  local utc = false
  layout = layout or "%c"
  if sub(layout, 1, 1) == "!" then
    utc = true
    layout = gsub(layout, "^!+", "")
  end
  if when ~= nil then
    utc = false
  else
    when = now()
  end
  if sub(layout, 1, 2) == "*t" then
    local fields = real_os.date(utc and "!*t" or "*t", when)
    fields.yday, fields.isdst = 0, false
    return fields
  end
  return argo_strftime(layout, when, utc)
end

local sandbox = {}
local safe_table = {
  concat = table.concat, getn = table.getn, insert = table.insert,
  maxn = table.maxn, remove = table.remove, sort = table.sort,
}
local package_table = {
  loaded = { _G = sandbox, table = safe_table },
  -- Argo's SafeOsLoader: a table of its own, not the (absent) global os.
  preload = { os = function() return { time = argo_time, date = argo_date } end },
  path = "", cpath = "",
}

local function confine(chunk, message)
  if chunk then
    real_setfenv(chunk, sandbox)
  end
  return chunk, message
end

for _, name in ipairs({
  "assert", "collectgarbage", "error", "ipairs", "newproxy", "next", "pairs", "pcall",
  "rawequal", "rawget", "rawset", "select", "setfenv", "setmetatable", "tonumber",
  "tostring", "type", "unpack", "xpcall",
}) do
  sandbox[name] = _G[name]
end
sandbox._G = sandbox
sandbox._VERSION = "Lua 5.1"
sandbox.table = safe_table
sandbox.package = package_table
sandbox.actionParams = {}
-- Argo CD prints to its server log; here that is stderr, so stdout stays the result.
sandbox.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do
    parts[i] = real_tostring((select(i, ...)))
  end
  stderr:write(concat(parts, "\t"), "\n")
end
-- Without the string library, strings have no metatable.
sandbox.getmetatable = function(v)
  if type(v) == "string" then
    return nil
  end
  return getmetatable(v)
end
-- Every way to reach a function's environment ends in the sandbox, never in this file's.
sandbox.getfenv = function(f)
  if type(f) == "number" and f > 0 then
    f = f + 1
  end
  local env = real_getfenv(f or 2)
  if env == _G then
    return sandbox
  end
  return env
end
sandbox.loadstring = function(source, name)
  return confine(real_loadstring(source, name))
end
sandbox.load = function(reader, name)
  return confine(load(reader, name))
end
sandbox.loadfile = function(path)
  return confine(real_loadfile(path))
end
sandbox.dofile = function(path)
  local chunk = assert(sandbox.loadfile(path))
  return chunk()
end
sandbox.require = function(name)
  local loaded = package_table.loaded[name]
  if loaded ~= nil then
    return loaded
  end
  local loader = package_table.preload[name]
  if not loader then
    error("module " .. real_tostring(name) .. " not found", 2)
  end
  loaded = loader(name)
  package_table.loaded[name] = loaded
  return loaded
end

local script_file = io.open(script_path, "rb")
if not script_file then
  harness_failure("cannot read " .. script_path)
end
local source = script_file:read("*a")
script_file:close()
sandbox.obj = decode(io.read("*a"))

local function report(key, value)
  stdout:write('{"', key, '":', value, "}\n")
end

-- Argo names the chunk <string>, so error positions read "<string>:LINE:".
local chunk, syntax_error = real_loadstring(source, "=<string>")
if not chunk then
  report("error", encode(syntax_error))
  return
end
real_setfenv(chunk, sandbox)

local string_metatable = getmetatable("")
local string_index = string_metatable.__index
local started = real_os.clock()
-- Argo gives every script a 1 s context.
debug.sethook(function()
  if real_os.clock() - started > 1 then
    error("context deadline exceeded", 2)
  end
end, "", 10000)
local function collect(...)
  return select("#", ...), { ... }
end
string_metatable.__index = nil
local count, outcome = collect(pcall(chunk))
string_metatable.__index = string_index
debug.sethook()

if not outcome[1] then
  report("error", encode(real_tostring(outcome[2])))
  return
end
-- Argo reads the top of the stack: the last value returned, nil for none.
local returned = nil
if count > 1 then
  returned = outcome[count]
end
local encoded, json = pcall(encode, returned)
if encoded then
  report("result", json)
else
  report("error", encode("encode: " .. real_tostring(json)))
end
