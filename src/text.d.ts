/** Files bundled as text (`import x from "../LICENSE" with { type: "text" }`): in the binary too. */
declare module "*/LICENSE" {
  const text: string;
  export default text;
}
