-- cnnc's language server in Neovim (0.7 or newer): diagnostics, hover, go to definition,
-- completion, symbols and formatting for .cnn files.
--
-- Put this file on the runtimepath (for instance ~/.config/nvim/lua/cnnc.lua) and add to init.lua:
--     require("cnnc").setup()
-- or, with options:
--     require("cnnc").setup({ cmd = { "/path/to/cnnc", "lsp" }, keymaps = false })
-- `cnnc` must be on the PATH (cargo install --path . in the cnnc repository), or given in `cmd`.

local M = {}

-- One client per project folder.
local clients = {}

local function root_of(bufnr)
  return vim.fn.fnamemodify(vim.api.nvim_buf_get_name(bufnr), ":p:h")
end

local function keymaps(bufnr)
  local map = function(lhs, rhs, desc)
    vim.keymap.set("n", lhs, rhs, { buffer = bufnr, silent = true, desc = desc })
  end
  map("K", vim.lsp.buf.hover, "cnnc: shapes and arithmetic of what is under the cursor")
  map("gd", vim.lsp.buf.definition, "cnnc: go to definition")
  map("<leader>f", function()
    if vim.lsp.buf.format then
      vim.lsp.buf.format({ async = false })
    else
      vim.lsp.buf.formatting_sync(nil, 2000)
    end
  end, "cnnc: format the file")
  vim.bo[bufnr].omnifunc = "v:lua.vim.lsp.omnifunc"
end

function M.attach(bufnr, opts)
  local root = root_of(bufnr)
  local id = clients[root]
  if id == nil or vim.lsp.get_client_by_id(id) == nil then
    id = vim.lsp.start_client({
      name = "cnnc",
      cmd = opts.cmd or { "cnnc", "lsp" },
      root_dir = root,
    })
    clients[root] = id
  end
  if id then
    vim.lsp.buf_attach_client(bufnr, id)
    if opts.keymaps ~= false then
      keymaps(bufnr)
    end
  end
  return id
end

function M.setup(opts)
  opts = opts or {}
  local group = vim.api.nvim_create_augroup("cnnc", { clear = true })
  vim.api.nvim_create_autocmd({ "BufRead", "BufNewFile" }, {
    group = group,
    pattern = "*.cnn",
    command = "setfiletype cnn",
  })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = "cnn",
    callback = function(args)
      vim.bo[args.buf].commentstring = "// %s"
      M.attach(args.buf, opts)
    end,
  })
end

return M
