// Entry point: the live view polls the engine; the registry view appears when it follows one.
import { switchToken } from "./auth.js";
import { startLive } from "./live.js";
import { startRegistry } from "./registry.js";

document.getElementById("switch-token").addEventListener("click", switchToken);

startLive();
startRegistry();
