// Entry point: the live view polls the engine; the registry view appears when it follows one.
import { startLive } from "./live.js";
import { startRegistry } from "./registry.js";

startLive();
startRegistry();
