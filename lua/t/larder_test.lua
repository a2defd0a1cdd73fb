-- Test locations for lua/t/test_nginx.py and lua/bench.sh (lua/t/tests.conf includes
-- them). Each handler answers one JSON object.

local ffi = require("ffi")
local larder = require("resty.larder")

if not pcall(ffi.typeof, "struct timespec") then
    ffi.cdef([[
        struct timespec { long tv_sec; long tv_nsec; };
    ]])
end
if not pcall(function() return ffi.C.clock_gettime end) then
    ffi.cdef([[
        int clock_gettime(int clk_id, struct timespec *tp);
    ]])
end
local CLOCK_MONOTONIC = 1

local _M = {}

local CAPACITY = 4 * 1024 * 1024
local MAX_VALUE = 128 * 1024

local function json(v)
    local t = type(v)
    if t == "table" then
        local parts = {}
        if #v > 0 or next(v) == nil then
            for i = 1, #v do
                parts[i] = json(v[i])
            end
            return "[" .. table.concat(parts, ",") .. "]"
        end
        for k, x in pairs(v) do
            parts[#parts + 1] = json(tostring(k)) .. ":" .. json(x)
        end
        return "{" .. table.concat(parts, ",") .. "}"
    elseif t == "string" then
        return '"' .. v:gsub('[%c"\\\128-\255]', function(c)
            return string.format("\\u%04x", c:byte())
        end) .. '"'
    elseif t == "number" then
        return string.format("%.17g", v)
    end
    return tostring(v)
end

local function reply(t)
    if type(t.same) == "function" then
        t = { passed = t.passed, failures = t.failures }
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.say(json(t))
end

-- The dict a request names: ?backend=shared (lua_shared_dict "cmp") or larder (the
-- cache ?cache=NAME, normal mode unless ?raw=1).
local function dict_of(args)
    if args.backend == "shared" then
        return ngx.shared[args.shm or "cmp"]
    end
    local d, err = larder.open(args.cache, {
        capacity = tonumber(args.capacity) or CAPACITY,
        max_value_len = MAX_VALUE,
        raw = args.raw == "1",
        lock_timeout_ms = tonumber(args.lock_timeout_ms),
        fill_timeout_ms = tonumber(args.fill_timeout_ms),
    })
    if not d then
        ngx.status = 500
        reply({ error = err })
        return ngx.exit(500)
    end
    return d
end

------------------------------------------------------------------------------------
-- A tiny assertion recorder
------------------------------------------------------------------------------------

local function recorder()
    local r = { passed = 0, failures = {} }
    -- eq(what, expected..., "|", actual...): compares the packed lists, length too.
    function r.same(what, expected, ...)
        local n = select("#", ...)
        local actual = { ... }
        local ok = n == expected.n
        for i = 1, math.max(n, expected.n) do
            local a, e = actual[i], expected[i]
            if not (a == e or (a ~= a and e ~= e)) then
                ok = false
            end
        end
        if ok then
            r.passed = r.passed + 1
        else
            local show = {}
            for i = 1, n do
                show[i] = tostring(actual[i])
            end
            local want = {}
            for i = 1, expected.n do
                want[i] = tostring(expected[i])
            end
            r.failures[#r.failures + 1] = what .. ": got (" .. table.concat(show, ", ")
                .. ") want (" .. table.concat(want, ", ") .. ")"
        end
    end
    function r.truthy(what, cond, detail)
        if cond then
            r.passed = r.passed + 1
        else
            r.failures[#r.failures + 1] = what .. (detail and (": " .. tostring(detail)) or "")
        end
    end
    return r
end

local function pack(...)
    return { n = select("#", ...), ... }
end

-- Polls cond() (which may sleep) until true or the deadline passes.
local function wait_for(cond, seconds)
    local deadline = ngx.now() + seconds
    while true do
        if cond() then
            return true
        end
        ngx.update_time()
        if ngx.now() > deadline then
            return false
        end
        ngx.sleep(0.005)
    end
end

------------------------------------------------------------------------------------
-- /t/conformance: the same assertions against a lua_shared_dict and against larder
------------------------------------------------------------------------------------

function _M.conformance()
    local d = dict_of(ngx.req.get_uri_args())
    local r = recorder()
    d:flush_all()

    r.same("get missing", pack(nil), d:get("nope"))
    r.same("set string", pack(true, nil, false), d:set("s", "hello"))
    r.same("get string", pack("hello"), d:get("s"))
    r.same("set empty string", pack(true, nil, false), d:set("e", ""))
    r.same("get empty string", pack(""), d:get("e"))
    local bin = "\0\1\2\255\0"
    d:set("bin", bin)
    r.same("binary round trip", pack(bin), d:get("bin"))
    for len = 0, 12 do
        local v = string.rep("x", len)
        d:set("len" .. len, v)
        r.same("string of " .. len .. " bytes", pack(v), d:get("len" .. len))
        d:set("flen" .. len, v, 0, 3)
        r.same("string of " .. len .. " bytes, flags 3", pack(v, 3), d:get("flen" .. len))
    end
    r.same("set with flags", pack(true, nil, false), d:set("f", "v", 0, 7))
    r.same("get with flags", pack("v", 7), d:get("f"))
    r.same("flags 2^31-1", pack("v", 2147483647),
           (function() d:set("fm", "v", 0, 2147483647) return d:get("fm") end)())
    for _, n in ipairs({ 0, 1, -1, 42, 3.5, -2.25, 2 ^ 53, -(2 ^ 53), 2 ^ 60, 1e300,
                         -1e-300, math.huge, -math.huge }) do
        d:set("n", n)
        local v = d:get("n")
        r.same("number " .. tostring(n), pack(n, "number"), v, type(v))
    end
    d:set("nan", 0 / 0)
    local nan = d:get("nan")
    r.truthy("number nan", nan ~= nan)
    d:set("nf", 12, 0, 9)
    r.same("number with flags", pack(12, 9), d:get("nf"))
    d:set("t", true)
    r.same("boolean true", pack(true), d:get("t"))
    d:set("b", false, 0, 2)
    r.same("boolean false with flags", pack(false, 2), d:get("b"))
    r.same("set nil deletes", pack(true, nil, false), d:set("t", nil))
    r.same("deleted", pack(nil), d:get("t"))
    r.same("bad value type", pack(nil, "bad value type"), d:set("x", {}))

    r.same("add new", pack(true, nil, false), d:add("a", "1"))
    r.same("add existing", pack(false, "exists", false), d:add("a", "2"))
    r.same("add kept the first", pack("1"), d:get("a"))
    r.same("safe_add existing", pack(false, "exists", false), d:safe_add("a", "2"))
    r.same("replace missing", pack(false, "not found", false), d:replace("r", "1"))
    r.same("replace existing", pack(true, nil, false), d:replace("a", "3"))
    r.same("replaced", pack("3"), d:get("a"))
    r.same("safe_set", pack(true, nil, false), d:safe_set("ss", "v"))
    r.same("safe_set stored", pack("v"), d:get("ss"))

    r.same("incr missing", pack(nil, "not found"), d:incr("c", 1))
    r.same("incr with init", pack(1, nil, false), d:incr("c", 1, 0))
    r.same("incr", pack(3), d:incr("c", 2))
    r.same("incr negative", pack(-7), d:incr("c", -10))
    r.same("get counter", pack(-7), d:get("c"))
    r.same("incr fraction", pack(-6.5), d:incr("c", 0.5))
    r.same("incr init fraction", pack(2.5, nil, false), d:incr("cf", 2, 0.5))
    r.same("incr a string", pack(nil, "not a number"), d:incr("s", 1))
    r.same("incr a string with init", pack(nil, "not a number"), d:incr("s", 1, 0))
    d:set("fc", 10, 0, 5)
    r.same("incr keeps flags", pack(11), d:incr("fc", 1))
    r.same("flags kept", pack(11, 5), d:get("fc"))
    r.same("incr string delta", pack(13), d:incr("fc", "2"))
    r.same("incr init_ttl", pack(1, nil, false), d:incr("ct", 1, 0, 100))
    local ttl = d:ttl("ct")
    r.truthy("incr init_ttl sets the ttl", ttl > 99 and ttl <= 100, ttl)
    d:set("cn", 5, 100)
    d:incr("cn", 1)
    ttl = d:ttl("cn")
    r.truthy("incr keeps the ttl", ttl > 99 and ttl <= 100, ttl)

    r.same("ttl missing", pack(nil, "not found"), d:ttl("nope"))
    r.same("ttl of no expiry", pack(0), d:ttl("s"))
    d:set("x", "v", 10)
    ttl = d:ttl("x")
    r.truthy("ttl", ttl > 9 and ttl <= 10, ttl)
    r.same("expire", pack(true), d:expire("x", 100))
    ttl = d:ttl("x")
    r.truthy("ttl after expire", ttl > 99 and ttl <= 100, ttl)
    r.same("expire 0: no expiry", pack(true), d:expire("x", 0))
    r.same("ttl after expire 0", pack(0), d:ttl("x"))
    r.same("expire missing", pack(nil, "not found"), d:expire("nope", 1))

    r.same("get_stale fresh", pack("hello", nil, false), d:get_stale("s"))
    r.same("get_stale fresh with flags", pack("v", 7, false), d:get_stale("f"))
    d:set("old", "stale!", 0.001, 4)
    r.truthy("expires", wait_for(function() return d:get("old") == nil end, 5))
    r.same("get_stale expired", pack("stale!", 4, true), d:get_stale("old"))

    r.same("number key", pack(true, nil, false), d:set(123, "n"))
    r.same("number key is its string", pack("n"), d:get("123"))
    r.same("nil key get", pack(nil, "nil key"), d:get(nil))
    r.same("nil key set", pack(nil, "nil key"), d:set(nil, "v"))
    r.same("empty key", pack(nil, "empty key"), d:get(""))
    r.same("empty key set", pack(nil, "empty key"), d:set("", "v"))
    r.same("nil key incr", pack(nil, "nil key"), d:incr(nil, 1))
    r.same("nil key ttl", pack(nil, "nil key"), d:ttl(nil))

    r.same("delete", pack(true, nil, false), d:delete("s"))
    r.same("delete missing", pack(true, nil, false), d:delete("s"))
    r.same("deleted key", pack(nil), d:get("s"))

    r.truthy("capacity", type(d:capacity()) == "number" and d:capacity() > 0)
    r.truthy("free_space", type(d:free_space()) == "number" and d:free_space() >= 0)
    r.same("flush_all", pack(), d:flush_all())
    r.same("flushed", pack(nil), d:get("a"))
    reply(r)
end

------------------------------------------------------------------------------------
-- /t/larder_only: what larder does differently or in addition
------------------------------------------------------------------------------------

function _M.larder_only()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local r = recorder()

    for _, m in ipairs({ "get_keys", "flush_expired", "lpush", "rpush", "lpop", "rpop",
                         "llen" }) do
        r.same(m, pack(nil, "not supported"), d[m](d, "k"))
    end
    r.same("key too long", pack(nil, "key too long"), d:get(string.rep("k", 257)))
    r.same("value too large", pack(false, "value too large", false),
           d:set("big", string.rep("v", MAX_VALUE + 1)))
    r.same("negative exptime", pack(false, 'bad "exptime" argument', false),
           d:set("k", "v", -1))
    r.same("expire without exptime", pack(nil, 'bad "exptime" argument'), d:expire("k"))
    r.same("init_ttl without init", pack(nil, 'must provide "init" when providing "init_ttl"'),
           d:incr("k", 1, nil, 5))
    r.same("bad init", pack(nil, "bad init arg: number expected, got table"),
           d:incr("k", 1, {}))
    r.same("bad flags", pack(false, 'bad "flags" argument', false), d:set("k", "v", 0, -1))
    r.same("called with a dot", pack(nil, 'bad "zone" argument'), d.get("k"))
    r.same("exptime past 2^53 ms", pack(false, 'bad "exptime" argument', false),
           d:set("k", "v", 2 ^ 53))
    r.same("expire past 2^53 ms", pack(nil, 'bad "exptime" argument'), d:expire("k", 1e300))
    r.same("init_ttl past 2^53 ms", pack(nil, 'bad "init_ttl" argument'),
           d:incr("k", 1, 0, 2 ^ 60))
    for _, bad in ipairs({ { "max_key_len", 2 ^ 32 + 16 }, { "shards", 2 ^ 32 },
                           { "mode", math.huge }, { "capacity", math.huge },
                           { "capacity", 2 ^ 53 + 2 }, { "lock_timeout_ms", 0 / 0 },
                           { "fill_timeout_ms", 1.5 }, { "max_value_len", -1 } }) do
        r.same("option " .. bad[1] .. " = " .. tostring(bad[2]),
               pack(nil, 'bad "' .. bad[1] .. '" option'),
               larder.open(args.cache .. "-bad", { [bad[1]] = bad[2] }))
    end
    -- flush_all removes (the dict only marks entries expired).
    d:set("gone", "v")
    d:flush_all()
    r.same("get_stale after flush_all", pack(nil), d:get_stale("gone"))

    -- No input raises.
    local weird = { {}, function() end, true, -1, 0 / 0, math.huge, -math.huge,
                    string.rep("z", 70000), "", ngx.null }
    local methods = { "get", "get_stale", "set", "safe_set", "add", "safe_add", "replace",
                      "delete", "incr", "ttl", "expire", "get_or_fill" }
    local raised = {}
    for _, m in ipairs(methods) do
        for _, a in ipairs(weird) do
            for _, b in ipairs(weird) do
                local ok, err = pcall(d[m], d, a, b, b, b)
                if not ok then
                    raised[#raised + 1] = m .. ": " .. tostring(err)
                end
            end
        end
    end
    r.truthy("no input raises", #raised == 0, raised[1])

    -- Raw mode: bytes as given, shared with other languages; no flags.
    local raw = larder.open(args.cache, { capacity = CAPACITY, max_value_len = MAX_VALUE,
                                          raw = true })
    r.same("raw set", pack(true, nil, false), raw:set("r", "\1abc"))
    r.same("raw get", pack("\1abc"), raw:get("r"))
    r.same("raw number is its string", pack("12"), (function()
        raw:set("rn", 12) return raw:get("rn") end)())
    r.same("raw flags", pack(false, "flags not supported in raw mode", false),
           raw:set("r", "v", 0, 1))
    r.same("raw boolean", pack(nil, "bad value type"), raw:set("r", true))
    r.same("raw incr", pack(5, nil, false), raw:incr("rc", 5, 0))
    r.same("raw counter bytes", pack("\5\0\0\0\0\0\0\0"), raw:get("rc"))
    r.same("normal mode reads the counter", pack(5), d:get("rc"))
    r.same("normal incr of the counter", pack(7), d:incr("rc", 2))
    r.same("raw sees it", pack(9, nil, false), raw:incr("rc", 2, 0))
    r.same("raw fractional delta", pack(nil, "raw counters are integers"), raw:incr("rc", 0.5))
    r.same("raw fractional init", pack(nil, "raw counters are integers"),
           raw:incr("rf", 1, 0.5))
    r.same("raw counter kept", pack("\9\0\0\0\0\0\0\0"), raw:get("rc"))
    r.same("raw absent after a refused init", pack(nil), raw:get("rf"))
    raw:set("foreign", "plain text")
    local v, err = d:get("foreign")
    r.truthy("normal mode refuses a foreign value", v == nil and err ~= nil, err)

    -- Single flight in one worker.
    local calls = 0
    local function fn(x)
        calls = calls + 1
        return "computed " .. x
    end
    d:delete("sf")
    r.same("fill: computed", pack("computed a", nil, "filled"), d:get_or_fill("sf", fn, 60, "a"))
    r.same("fill: then a hit", pack("computed a", nil, "hit"), d:get_or_fill("sf", fn, 60, "b"))
    r.same("fill: fn ran once", pack(1), calls)
    d:delete("sf2")
    r.same("fill: fn error", pack(nil, "no backend"),
           d:get_or_fill("sf2", function() return nil, "no backend" end))
    local got, ferr = d:get_or_fill("sf2", function() error("boom") end)
    r.truthy("fill: fn raises", got == nil and tostring(ferr):find("boom", 1, true), ferr)
    r.same("fill: abandoned fills are taken again", pack("ok", nil, "filled"),
           d:get_or_fill("sf2", function() return "ok" end))
    -- A fill whose fn yields, while another coroutine of this worker wants the key.
    d:delete("sf3")
    local n3 = 0
    local slow = function()
        n3 = n3 + 1
        ngx.sleep(0.05)
        return "slow"
    end
    local co = ngx.thread.spawn(function() return d:get_or_fill("sf3", slow, 60) end)
    local other = pack(d:get_or_fill("sf3", slow, 60))
    local _, a1, a2, a3 = ngx.thread.wait(co)
    r.same("yielding fill: the filler", pack("slow", nil, "filled"), a1, a2, a3)
    r.same("yielding fill: the waiter", pack("slow", nil, "hit"), unpack(other, 1, other.n))
    r.same("yielding fill: fn ran once", pack(1), n3)
    -- A revocation while fn runs: the value is returned but not stored.
    d:delete("sf4")
    r.same("fill fenced", pack("old claims", nil, "fenced"), d:get_or_fill("sf4", function()
        d:delete("sf4") -- another worker revokes it meanwhile
        return "old claims"
    end, 60))
    r.same("fenced value not stored", pack(nil), d:get("sf4"))
    reply(r)
end

------------------------------------------------------------------------------------
-- /t/shared_file: the options for a file shared between uids. ?group: the gid the file
-- ?cache is created with (mode 0660), which stores k = v. With ?owner (a uid the test
-- gave the file to meanwhile): refused unless that owner is in allow_uids.
------------------------------------------------------------------------------------

function _M.shared_file()
    local args = ngx.req.get_uri_args()
    local r = recorder()
    local function opts(extra)
        local o = { capacity = CAPACITY, max_value_len = MAX_VALUE }
        for k, v in pairs(extra) do
            o[k] = v
        end
        return o
    end
    local bad_group, bad_uids = 'bad "group" option',
                                'bad "allow_uids" option: a list of at most 4 uids'
    for what, case in pairs({
        ["group as a string"] = { { group = "www-data" }, bad_group },
        ["negative group"] = { { group = -1 }, bad_group },
        ["group over 32 bits"] = { { group = 2 ^ 32 }, bad_group },
        ["fractional group"] = { { group = 1.5 }, bad_group },
        ["five uids"] = { { allow_uids = { 1, 2, 3, 4, 5 } }, bad_uids },
        ["uids with keys"] = { { allow_uids = { a = 1 } }, bad_uids },
        ["uids with a hole"] = { { allow_uids = { 1, nil, 3 } }, bad_uids },
        ["uids not a table"] = { { allow_uids = 0 }, bad_uids },
        ["a negative uid"] = { { allow_uids = { -1 } }, bad_uids },
        ["a uid as a string"] = { { allow_uids = { "0" } }, bad_uids },
    }) do
        r.same(what, pack(nil, case[2]), larder.open(args.cache, opts(case[1])))
    end

    local owner = tonumber(args.owner)
    if not owner then
        local d, err = larder.open(args.cache, opts({ mode = tonumber("660", 8),
                                                      group = tonumber(args.group),
                                                      allow_uids = { 0 } }))
        r.truthy("open with a group and allowed uids", d, err)
        if d then
            r.same("set", pack(true, nil, false), d:set("k", "v"))
        end
        return reply(r)
    end
    local d, err = larder.open(args.cache, opts({ allow_uids = { owner + 1 } }))
    r.truthy("another owner's file is refused", d == nil and err
             and err:find("owned by uid " .. owner, 1, true), err)
    d, err = larder.open(args.cache, opts({ allow_uids = { owner + 1, owner } }))
    r.truthy("opened with its owner allowed", d, err)
    if d then
        r.same("the value is there", pack("v"), d:get("k"))
    end
    reply(r)
end

------------------------------------------------------------------------------------
-- /t/fill: a fill across workers. fn takes ?ms and counts its runs in ?key .. ":runs".
------------------------------------------------------------------------------------

function _M.fill()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local key = args.key
    local v, err, how = d:get_or_fill(key, function()
        d:incr(key .. ":runs", 1, 0)
        ngx.sleep((tonumber(args.ms) or 100) / 1000)
        return "value of " .. key
    end, 60)
    reply({ value = v, error = err, how = how, runs = d:get(key .. ":runs"),
            pid = ngx.worker.pid() })
end

------------------------------------------------------------------------------------
-- /t/churn: n writes of self-checking values of random sizes, then reads of every key;
-- counts values that do not check out (torn) and errors. /t/verify reads only.
------------------------------------------------------------------------------------

local function make_value(key, size, nonce)
    local head = key .. ":" .. size .. ":" .. nonce .. ":"
    local fill = string.char(65 + nonce % 26)
    if size < #head then
        size = #head
    end
    return head .. string.rep(fill, size - #head)
end

local function check_value(key, v)
    local k, size, nonce, body = v:match("^([^:]*):(%d+):(%d+):(.*)$")
    if k ~= key then
        return false
    end
    size, nonce = tonumber(size), tonumber(nonce)
    local expected = make_value(key, size, nonce)
    return v == expected
end

local function verify(d, keys, out)
    for i = 1, keys do
        local key = "churn" .. i
        local v, err = d:get(key)
        if v ~= nil then
            out.read = out.read + 1
            if not check_value(key, v) then
                out.torn = out.torn + 1
            end
        elseif err then
            out.errors[#out.errors + 1] = "get: " .. err
        end
    end
end

function _M.churn()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local n, keys = tonumber(args.n) or 20, tonumber(args.keys) or 16
    local maxsize = tonumber(args.max) or 20000
    local out = { written = 0, read = 0, torn = 0, errors = {}, pid = ngx.worker.pid() }
    for _ = 1, n do
        local key = "churn" .. math.random(keys)
        local size = math.floor(math.exp(math.random() * math.log(maxsize / 10)) * 10)
        local ok, err = d:set(key, make_value(key, size, math.random(1000000)))
        if ok then
            out.written = out.written + 1
        else
            out.errors[#out.errors + 1] = "set: " .. tostring(err)
        end
    end
    verify(d, keys, out)
    reply(out)
end

function _M.verify()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local out = { read = 0, torn = 0, errors = {} }
    verify(d, tonumber(args.keys) or 16, out)
    out.stats = d.stats and d:stats() or nil
    reply(out)
end

------------------------------------------------------------------------------------
-- /t/mixed: sets of values from 10 B to 100 KiB (log-uniform, seeded) over a small
-- working set of keys, so the cache stays mostly empty; counts "no memory" failures.
------------------------------------------------------------------------------------

function _M.mixed()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local n, keys = tonumber(args.n) or 2000, tonumber(args.keys) or 8
    math.randomseed(tonumber(args.seed) or 1)
    d:flush_all()
    -- A past of small entries: as many as fit, then 7 in 8 deleted. The cache is
    -- then mostly empty (what was left is counted in live_before).
    local small = tonumber(args.small) or 40000
    local live = 0
    for i = 1, small do
        d:set("small" .. i, string.rep("s", 64))
    end
    for i = 1, small do
        if i % 8 ~= 0 then
            d:delete("small" .. i)
        elseif d:get("small" .. i) then
            live = live + 64
        end
    end
    local live_before = live
    local failures, other, forcible, live_max = 0, {}, 0, 0
    local sizes = {}
    for i = 1, n do
        local key = "mixed" .. (i % keys)
        local size = math.floor(math.exp(math.random() * math.log(102400 / 10)) * 10)
        local ok, err, forced = d:set(key, string.rep("m", size))
        if not ok then
            if err == "no memory" then
                failures = failures + 1
            else
                other[#other + 1] = err
            end
            sizes[key] = nil
        else
            sizes[key] = size
        end
        if forced then
            forcible = forcible + 1
        end
        local sum = live_before
        for _, s in pairs(sizes) do
            sum = sum + s
        end
        live_max = math.max(live_max, sum)
    end
    reply({ sets = n, no_memory = failures, other_errors = other, forcible = forcible,
            live_before = live_before, live_max = live_max, capacity = d:capacity() })
end

------------------------------------------------------------------------------------
-- /t/bench: ops/s of get (hit), set and incr in a loop inside one request.
------------------------------------------------------------------------------------

function _M.bench()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local n = tonumber(args.n) or 200000
    local value = string.rep("v", tonumber(args.size) or 256)
    local keys = {}
    for i = 1, 1000 do
        keys[i] = "bench:key:" .. i
        d:set(keys[i], value)
    end
    local out = {}
    -- ngx.now() counts milliseconds: loops are timed with CLOCK_MONOTONIC instead.
    local ts = ffi.new("struct timespec")
    local function now()
        ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
        return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
    local function time(name, f)
        local t0 = now()
        f()
        out[name] = math.floor(n / (now() - t0))
    end
    -- Every get must be a hit, and its value a string the loop uses (so that nothing
    -- of the call can be left out by the compiler): the bytes read are counted.
    local bytes = 0
    time("get", function()
        for i = 1, n do
            bytes = bytes + #d:get(keys[i % 1000 + 1])
        end
    end)
    if bytes ~= n * #value then
        return reply({ error = "gets missed: " .. bytes .. " bytes read of " .. n * #value })
    end
    time("set", function()
        for i = 1, n do
            d:set(keys[i % 1000 + 1], value)
        end
    end)
    time("incr", function()
        for i = 1, n do
            d:incr("bench:counter", 1, 0)
        end
    end)
    reply(out)
end

------------------------------------------------------------------------------------
-- /t/hammer: ?seconds of sets of same-size self-checking values (in place, for the
-- dict), without yielding, so that a signal from outside lands inside a write;
-- /t/whois: the pid of the worker hammering.
------------------------------------------------------------------------------------

function _M.hammer()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    local keys, size = tonumber(args.keys) or 16, tonumber(args.size) or 65536
    local seconds = tonumber(args.seconds) or 2
    ngx.shared.meta:set("hammer", ngx.worker.pid(), seconds)
    ngx.update_time()
    local deadline = ngx.now() + seconds
    local n = 0
    repeat
        for _ = 1, 100 do
            local key = "churn" .. math.random(keys)
            d:set(key, make_value(key, size, math.random(100000, 999999)))
            n = n + 1
        end
        ngx.update_time()
    until ngx.now() > deadline
    reply({ sets = n })
end

------------------------------------------------------------------------------------
-- Waiting (lua/t/test_nginx.py's TestWaiting, while another process is stopped
-- holding the shard lock of ?key): /t/blocked runs every method on ?key in the
-- content phase, each of which sleeps until the lock timeout; /t/pid answers at once
-- (the worker's pid, and whether /t/blocked has begun); /t/busy (tests.conf, set_by_lua)
-- runs them where nothing may wait.
------------------------------------------------------------------------------------

-- Every method of the dict on key: { method = the error it returned }.
local function every_method(d, key)
    local out = {}
    local function put(m, ...)
        local n = select("#", ...)
        local t = { ... }
        -- The error: the second value, or for a method that returns only nil, err.
        out[m] = tostring(n >= 2 and t[2] or t[1])
    end
    put("get", d:get(key))
    put("get_stale", d:get_stale(key))
    put("set", d:set(key, "v"))
    put("add", d:add(key, "v"))
    put("replace", d:replace(key, "v"))
    put("delete", d:delete(key))
    put("incr", d:incr(key, 1, 0))
    put("incr_float", d:incr(key, 0.5, 0))
    put("ttl", d:ttl(key))
    put("expire", d:expire(key, 10))
    put("flush_all", d:flush_all())
    put("get_or_fill", d:get_or_fill(key, function() return "filled" end, 10))
    return out
end

function _M.blocked()
    local args = ngx.req.get_uri_args()
    local d = dict_of(args)
    ngx.shared.meta:set("waiting:" .. args.cache, true, 60)
    ngx.update_time()
    local start = ngx.now()
    local errors = every_method(d, args.key)
    ngx.update_time()
    reply({ pid = ngx.worker.pid(), errors = errors, seconds = ngx.now() - start })
end

function _M.pid()
    local args = ngx.req.get_uri_args()
    if args.cache then
        dict_of(args) -- creates the cache
    end
    reply({ pid = ngx.worker.pid(),
            waiting = args.cache and ngx.shared.meta:get("waiting:" .. args.cache) or false })
end

-- In set_by_lua (a phase that cannot yield): a JSON answer, as a string.
function _M.busy()
    local args = ngx.req.get_uri_args()
    local d = assert(larder.open(args.cache, {
        capacity = CAPACITY, max_value_len = MAX_VALUE,
        lock_timeout_ms = tonumber(args.lock_timeout_ms),
        fill_timeout_ms = tonumber(args.fill_timeout_ms),
    }))
    return json({ phase = ngx.get_phase(), errors = every_method(d, args.key) })
end

function _M.whois()
    reply({ pid = ngx.shared.meta:get("hammer") or 0 })
end

return _M
