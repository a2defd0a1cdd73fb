-- The /op location of lua/t/nginx.sh: one operation on a raw-mode cache per request,
-- answered as one JSON object, for the tests of this folder and the three-language test.
--
--   /op?cache=NAME&op=OP&key=K[&value=V][&ttl=SECONDS][&capacity=BYTES]
--
--   capacity: used when the cache file is created; without it an existing file is
--   opened with its own parameters, and a missing one created with larder's default.
--
--   op=get     {"ok":true,"found":true,"value":"...","value_hex":"..."}
--              or {"ok":true,"found":false}
--   op=set     {"ok":true}
--   op=add     {"ok":true} or {"ok":false,"error":"exists"}
--   op=delete  {"ok":true}
--   op=incr    {"ok":true,"value":"7"} (value = the delta, default 1; a missing key
--              starts at 0; larder's 8-byte counter, shared with the other languages)
--   op=stats   {"ok":true,"stats":{"entries":1,...}}
--   any error  {"ok":false,"error":"..."} (status 200: the error is the answer)
-- A value that is not valid UTF-8 has "binary":true and no "value"; "value_hex" is
-- always there. A POST body, when there is one, is the value.

local larder = require("resty.larder")

local _M = {}

local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        if c == '"' then
            return '\\"'
        elseif c == "\\" then
            return "\\\\"
        end
        return string.format("\\u%04x", c:byte())
    end) .. '"'
end

local function is_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local extra
        if c < 0x80 then
            extra = 0
        elseif c >= 0xc2 and c <= 0xdf then
            extra = 1
        elseif c >= 0xe0 and c <= 0xef then
            extra = 2
        elseif c >= 0xf0 and c <= 0xf4 then
            extra = 3
        else
            return false
        end
        for j = i + 1, i + extra do
            local b = s:byte(j)
            if not b or b < 0x80 or b > 0xbf then
                return false
            end
        end
        i = i + extra + 1
    end
    return true
end

local function hex(s)
    return (s:gsub(".", function(c)
        return string.format("%02x", c:byte())
    end))
end

-- Writes a flat object; values are strings, booleans, numbers or flat tables.
local function reply(t)
    local parts = {}
    for k, v in pairs(t) do
        local tv = type(v)
        local enc
        if tv == "string" then
            enc = json_string(v)
        elseif tv == "table" then
            local inner = {}
            for ik, iv in pairs(v) do
                inner[#inner + 1] = json_string(ik) .. ":" .. tostring(iv)
            end
            enc = "{" .. table.concat(inner, ",") .. "}"
        else
            enc = tostring(v)
        end
        parts[#parts + 1] = json_string(k) .. ":" .. enc
    end
    ngx.header["Content-Type"] = "application/json"
    ngx.say("{", table.concat(parts, ","), "}")
end

local function fail(err)
    reply({ ok = false, error = tostring(err) })
end

local function value_arg(args)
    if ngx.req.get_method() == "POST" then
        ngx.req.read_body()
        local body = ngx.req.get_body_data()
        if body == nil and ngx.req.get_body_file() then
            return nil, "request body too large"
        end
        return body or ""
    end
    local v = args.value
    if type(v) == "table" then
        return nil, "value given twice"
    end
    if v == true then
        v = ""
    end
    return v
end

function _M.handle()
    local args = ngx.req.get_uri_args()
    local cache, op, key = args.cache, args.op, args.key
    if type(cache) ~= "string" or cache == "" then
        return fail("cache= is required")
    end
    if type(op) ~= "string" then
        return fail("op= is required")
    end
    local capacity = tonumber(args.capacity)
    if args.capacity ~= nil and not capacity then
        return fail("bad capacity")
    end
    -- Without capacity=, the cache as it is (its file's parameters), or a new one of
    -- larder's default size.
    local dict, err
    if not capacity then
        dict = larder.open(cache, { raw = true, attach_only = true })
    end
    if not dict then
        dict, err = larder.open(cache, { raw = true, capacity = capacity })
    end
    if not dict then
        return fail(err)
    end
    if op == "stats" then
        local s
        s, err = dict:stats()
        if not s then
            return fail(err)
        end
        return reply({ ok = true, stats = s })
    end
    if type(key) ~= "string" then
        return fail("key= is required")
    end
    local ttl = tonumber(args.ttl)
    if args.ttl ~= nil and not ttl then
        return fail("bad ttl")
    end

    if op == "get" then
        local v
        v, err = dict:get(key)
        if v == nil then
            if err then
                return fail(err)
            end
            return reply({ ok = true, found = false })
        end
        local t = { ok = true, found = true, value_hex = hex(v) }
        if is_utf8(v) then
            t.value = v
        else
            t.binary = true
        end
        return reply(t)
    elseif op == "set" or op == "add" then
        local v
        v, err = value_arg(args)
        if v == nil then
            return fail(err or "value= is required")
        end
        local ok
        ok, err = dict[op](dict, key, v, ttl)
        if not ok then
            return fail(err)
        end
        return reply({ ok = true })
    elseif op == "delete" then
        local ok
        ok, err = dict:delete(key)
        if not ok then
            return fail(err)
        end
        return reply({ ok = true })
    elseif op == "incr" then
        local delta = args.value == nil and 1 or tonumber(args.value)
        if not delta then
            return fail("bad value (the delta)")
        end
        local n
        n, err = dict:incr(key, delta, 0, ttl)
        if not n then
            return fail(err)
        end
        return reply({ ok = true, value = string.format("%d", n) })
    end
    return fail("unknown op: " .. op)
end

return _M
