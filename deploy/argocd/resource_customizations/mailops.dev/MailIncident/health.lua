-- Argo CD health of a MailIncident, read from the status the controller writes
-- (src/plan/status.rs): observedGeneration, and the kstatus conditions Ready,
-- Reconciling and Stalled, whose messages say what the incident's targets answer.
-- Runs without Lua's string library, as Argo CD runs argocd-cm scripts.

local function condition(kind)
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

if obj.status == nil or obj.status.conditions == nil then
  return { status = "Progressing", message = "Waiting for the controller to see this incident" }
end

local ready = condition("Ready")
local reconciling = condition("Reconciling")
local stalled = condition("Stalled")

local function message_of(c)
  if c == nil then
    return "Waiting for the controller to evaluate this incident"
  end
  return c.message
end

-- The controller's first status has Unknown conditions and no observedGeneration.
local observed = obj.status.observedGeneration
local generation = obj.metadata.generation
if observed == nil then
  return { status = "Progressing", message = message_of(ready) }
end
if generation ~= nil and observed ~= generation then
  return {
    status = "Progressing",
    message = "Waiting for the controller to observe generation " .. generation
      .. " (the status describes generation " .. observed .. ")",
  }
end

-- Targets the mode cannot reach (or cannot leave) until someone changes something. An
-- invalid spec keeps the failures of the last valid one: they are not news then.
local failed = obj.status.failedTargets or {}
local function with_failures(message)
  if #failed == 0 or (is_true(stalled) and stalled.reason == "InvalidSpec") then
    return message
  end
  message = message .. "; " .. failed[1].target .. ": " .. failed[1].reason
  if #failed > 1 then
    message = message .. " (and " .. (#failed - 1) .. " more in status.failedTargets)"
  end
  return message
end

if is_true(stalled) then
  return { status = "Degraded", message = with_failures(stalled.message) }
end
if #failed > 0 then
  return { status = "Degraded", message = with_failures(message_of(reconciling)) }
end
if is_true(ready) then
  local message = ready.message
  local escalated = obj.status.escalatedTargets or {}
  if #escalated > 0 then
    message = message .. "; " .. #escalated .. " escalated to TempFail (see status.escalatedTargets)"
  end
  return { status = "Healthy", message = message }
end
if is_true(reconciling) then
  return { status = "Progressing", message = reconciling.message }
end
-- Ready=False with neither of the others: the selector matches no workload, so the
-- incident protects nothing until someone fixes spec.targets or creates the MTAs.
if ready ~= nil and ready.status == "False" then
  return { status = "Degraded", message = ready.message }
end
return { status = "Progressing", message = message_of(ready) }
