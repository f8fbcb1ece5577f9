import { createMemoryStore } from "../../src/store/memory";
import { storeContract } from "./store.contract";

storeContract("memory", createMemoryStore);
