-- Which actions an incident offers. Argo CD runs an action whatever discovery says, so
-- each action checks its own preconditions too.
local actions = {}
local status = obj.status or {}
local ending = obj.spec.resolved == true or obj.metadata.deletionTimestamp ~= nil

actions["resolve"] = {
  ["disabled"] = ending,
  ["iconClass"] = "fa fa-fw fa-check",
  ["displayName"] = "Resolve (end the incident, keep the record)",
}

-- Only an incident that ends by itself has an end to move, and only an active one whose
-- status describes its current spec: extend counts from status.expiresAt.
local current = status.observedGeneration ~= nil and status.observedGeneration == obj.metadata.generation
actions["extend"] = {
  ["disabled"] = ending or status.expiresAt == nil or status.effectiveMode == "Normal" or not current,
  ["iconClass"] = "fa fa-fw fa-clock-o",
  ["displayName"] = "Extend by 1 day",
}

return actions
